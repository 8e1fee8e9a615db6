"""Postfix as a plain relay for the relay domain to the sink, from a config directory of its
own (``postfix -c DIR``): /etc/postfix and the system's Postfix are never touched.

Settings are Postfix's defaults except what a relay to one next hop needs (see
/work/shared/notes/postfix-relay.md). Queue files are fsynced, as Postfix always does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.systems import RELAY_DOMAIN, System, wait_for_port

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"


def _main_cf(d: Path) -> dict[str, str]:
    return {
        "compatibility_level": "3.6",
        "config_directory": str(d / "etc"),
        "queue_directory": str(d / "queue"),
        "data_directory": str(d / "data"),
        "myhostname": "postfix-bench.example",
        "mydestination": "",
        "relay_domains": RELAY_DOMAIN,
        "transport_maps": f"texthash:{d / 'etc' / 'transport'}",
        "default_transport": "error:not relaying",
        "mynetworks": "127.0.0.0/8",
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "alias_maps": "", "alias_database": "", "local_recipient_maps": "",
        "maillog_file": str(d / "postfix.log"),
        "maillog_file_prefixes": str(d),
        "syslog_name": "postfix-bench",
        "smtp_tls_security_level": "none",
        "smtpd_tls_security_level": "none",
        "smtpd_banner": "$myhostname ESMTP",
    }


class Postfix(System):
    name = "postfix"

    def _postconf(self, *args: str) -> None:
        subprocess.run([POSTCONF, "-c", str(self.dir / "etc"), *args], check=True,
                       stdout=subprocess.DEVNULL)

    def start(self) -> None:
        self.dir = self.workdir / "postfix"
        etc = self.dir / "etc"
        self.workdir.chmod(0o755)  # Postfix's daemons run as the postfix user
        for sub in ("etc", "queue", "data"):
            (self.dir / sub).mkdir(parents=True)
        shutil.chown(self.dir / "data", "postfix")
        shutil.copy("/etc/postfix/master.cf", etc / "master.cf")
        (etc / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in _main_cf(self.dir).items()))
        (etc / "transport").write_text(f"{RELAY_DOMAIN} smtp:[127.0.0.1]:{self.sink_port}\n")
        self._postconf("-F", "*/*/chroot = n")
        self._postconf("-MX", "smtp/inet")
        self._postconf("-M", f"127.0.0.1:{self.port}/inet="
                             f"127.0.0.1:{self.port} inet n - n - - smtpd")
        started = subprocess.run([POSTFIX, "-c", str(etc), "start"], capture_output=True,
                                 text=True)
        if started.returncode != 0:  # postfix tells why only on a terminal or in its log
            log = self.dir / "postfix.log"
            raise RuntimeError(f"postfix -c {etc} start failed: {started.stderr}"
                               f"{log.read_text()[-2000:] if log.exists() else ''}")
        wait_for_port(self.port)

    def master_pid(self) -> int | None:
        try:
            return int((self.dir / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def roots(self) -> list[int]:
        pid = self.master_pid()
        return [pid] if pid else []

    def stop(self) -> None:
        pid = self.master_pid()
        subprocess.run([POSTFIX, "-c", str(self.dir / "etc"), "stop"], capture_output=True)
        deadline = time.monotonic() + 15
        while pid and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid and os.path.exists(f"/proc/{pid}"):
            subprocess.run([POSTFIX, "-c", str(self.dir / "etc"), "abort"], capture_output=True)

    def describe(self) -> dict[str, Any]:
        version = subprocess.run([POSTCONF, "-h", "mail_version"], capture_output=True,
                                 text=True).stdout.strip()
        return {"name": self.name, "version": version,
                "what": "postfix -c <tmp> : smtpd -> queue (fsync) -> qmgr -> smtp"}
