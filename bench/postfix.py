"""Postfix as a plain relay for the relay domain to the sink (tests/support/postfix.py: a
config directory of its own, /etc/postfix and the system's Postfix never touched).

Settings are Postfix's defaults except what a relay to one next hop needs. Queue files are
fsynced, as Postfix always does.
"""

from __future__ import annotations

import subprocess
from typing import Any

from bench.systems import RELAY_DOMAIN, System
from tests.support.postfix import POSTCONF
from tests.support.postfix import Postfix as Instance


class Postfix(System):
    name = "postfix"

    def start(self) -> None:
        self.instance = Instance(self.workdir / "postfix", self.port)
        self.instance.start(name="postfix-bench", relay_domain=RELAY_DOMAIN,
                            next_hop_port=self.sink_port)

    def roots(self) -> list[int]:
        pid = self.instance.master_pid()
        return [pid] if pid else []

    def stop(self) -> None:
        self.instance.stop()

    def describe(self) -> dict[str, Any]:
        version = subprocess.run([POSTCONF, "-h", "mail_version"], capture_output=True,
                                 text=True).stdout.strip()
        return {"name": self.name, "version": version,
                "what": "postfix -c <tmp> : smtpd -> queue (fsync) -> qmgr -> smtp"}
