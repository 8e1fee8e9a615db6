"""Postfix as a plain relay for the relay domain to the sink, and Postfix in front of and
behind mailveil as deploy/postfix/ configures it (tests/support/postfix.py: a config
directory of its own, /etc/postfix and the system's Postfix never touched).

Settings are Postfix's defaults except what a relay to one next hop needs (plain) or what
deploy/postfix/ sets (in front). Queue files are fsynced, as Postfix always does.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from bench.mailveil_sut import Mailveil
from bench.systems import RELAY_DOMAIN, System, free_port
from tests.support.postfix import POSTCONF, deployed
from tests.support.postfix import Postfix as Instance

AUTHSERV_ID = "mx.reply.example.com"  # deploy/postfix's checkers


def postfix_version() -> str:
    return subprocess.run([POSTCONF, "-h", "mail_version"], capture_output=True,
                          text=True).stdout.strip()


def master_pids(instance: Instance) -> list[int]:
    pid = instance.master_pid()
    return [pid] if pid else []


class Postfix(System):
    name = "postfix"

    def start(self) -> None:
        self.instance = Instance(self.workdir / "postfix", self.port)
        self.instance.start(name="postfix-bench", relay_domain=RELAY_DOMAIN,
                            next_hop_port=self.sink_port)

    def roots(self) -> list[int]:
        return master_pids(self.instance)

    def stop(self) -> None:
        self.instance.stop()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": postfix_version(),
                "what": "postfix -c <tmp> : smtpd -> queue (fsync) -> qmgr -> smtp"}


class PostfixMailveil(Mailveil):
    """The production shape ("Behind a real MX"): one Postfix with deploy/postfix's services
    is the MX (asking mailveil's policy service at RCPT, then relaying to mailveil's listener
    with XFORWARD) and mailveil's smarthost, which delivers to the sink. The harness talks to
    Postfix's MX port; CPU and memory are Postfix's process tree, mailveil's and the
    database's. No milters: mailveil checks SPF and DMARC itself, as without Postfix."""

    def __init__(self, sink_port: int, workdir: Path, bookings: int, **kwargs: Any) -> None:
        super().__init__(sink_port, workdir, bookings, **kwargs)
        self.name = f"postfix-{self.name}"
        self.data_dir = workdir / self.name
        self.smtp_port, self.policy_port, self.behind_port = free_port(), free_port(), free_port()
        self.postfix = Instance(workdir / f"{self.name}-postfix", self.port)

    def env(self) -> dict[str, str]:
        return {**super().env(),
                "MAILVEIL_POLICY_LISTEN": f"127.0.0.1:{self.policy_port}",
                "MAILVEIL_TRUSTED_PEERS": "127.0.0.1/32",
                "MAILVEIL_TRUSTED_AUTHSERV_ID": AUTHSERV_ID,
                "MAILVEIL_SMARTHOST": f"127.0.0.1:{self.behind_port}"}

    def start(self) -> None:
        super().start()
        settings, services = deployed({"25": self.port, "2525": self.smtp_port,
                                       "10025": self.behind_port, "10040": self.policy_port},
                                      self.sink_port)
        self.postfix.start(name="postfix-mx-bench", relay_domain=RELAY_DOMAIN,
                           next_hop_port=self.smtp_port, services=services, settings=settings)

    def roots(self) -> list[int]:
        return master_pids(self.postfix) + self.mailveil_pids()

    def stop(self) -> None:
        self.postfix.stop()
        super().stop()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "postfix_version": postfix_version(),
                "what": "postfix smtpd (policy: mailveil at RCPT) -> queue -> smtp XFORWARD -> "
                        "python -m mailveil <role> -> postfix smtpd -> queue -> smtp"}
