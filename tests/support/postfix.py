"""The real Postfix as a plain relay for one domain to one next hop, from a config directory
of its own (``postfix -c DIR``): /etc/postfix and the system's Postfix are never touched.

Settings are Postfix's defaults except what a relay to one next hop needs (see
/work/shared/notes/postfix-relay.md) and what the caller adds. The end-to-end tests and the
benchmark (bench/postfix.py) both run it. :func:`deploy_config` reads the example
configuration operators get (deploy/postfix/), for tests that run exactly that.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.support.net import wait_for_port

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "postfix"


def deploy_config(ports: Mapping[str, int]) -> tuple[dict[str, str], str]:
    """deploy/postfix/main.cf as parameters and master.cf as text, with the example's ports
    (25 for the public MX, 2525, 10025, 10040) replaced by ``ports`` (keyed by the example's
    port as a string). The public ``smtp inet`` service listens on loopback instead."""
    def ported(text: str) -> str:
        text = re.sub(r"^smtp(\s+inet)", r"127.0.0.1:25\1", text, flags=re.M)
        return re.sub(r"(127\.0\.0\.1\]?:)(\d+)\b",
                      lambda m: m[1] + str(ports.get(m[2], m[2])), text)

    main: dict[str, str] = {}
    for entry in re.split(r"\n(?=\S)", (DEPLOY / "main.cf").read_text()):
        if entry.strip() and not entry.startswith("#"):
            name, _, value = entry.partition("=")
            main[name.strip()] = " ".join(value.split())
    master = "\n".join(line for line in (DEPLOY / "master.cf").read_text().splitlines()
                        if not line.lstrip().startswith("#"))
    return {k: ported(v) for k, v in main.items()}, ported(master) + "\n"


def deployed(ports: Mapping[str, int], world_port: int) -> tuple[dict[str, str], str]:
    """:func:`deploy_config` with what Postfix delivers to the world (what mailveil relays
    through it) going to 127.0.0.1:``world_port``: the ``settings`` and ``services`` for
    :meth:`Postfix.start`, whose ``next_hop_port`` is then mailveil's listener."""
    main, services = deploy_config(ports)
    return {**main, "default_transport": "smtp",
            "relayhost": f"[127.0.0.1]:{world_port}"}, services


class Postfix:
    """One Postfix instance under ``directory`` (to be made; the postfix user must be able to
    reach it: no parent of mode 0700 but the one made 0755 here), its smtpd on
    127.0.0.1:``port``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory, self.port = directory, port
        self.etc = directory / "etc"
        self.log = directory / "postfix.log"

    def start(self, *, name: str, relay_domain: str, next_hop_port: int,
              settings: Mapping[str, str] = {}, services: str | None = None) -> None:
        """Write the configuration, start Postfix and wait for its smtpd. ``settings`` are
        main.cf parameters added to or replacing the relay's; ``services`` (master.cf lines)
        replace its one smtpd on ``port``, and must listen there."""
        d = self.directory
        d.parent.chmod(0o755)  # Postfix's daemons run as the postfix user
        for sub in ("etc", "queue", "data"):
            (d / sub).mkdir(parents=True)
        shutil.chown(d / "data", "postfix")
        shutil.copy("/etc/postfix/master.cf", self.etc / "master.cf")
        main_cf = {
            "compatibility_level": "3.6",
            "config_directory": str(self.etc),
            "queue_directory": str(d / "queue"),
            "data_directory": str(d / "data"),
            "myhostname": f"{name}.example",
            "mydestination": "",
            "relay_domains": relay_domain,
            "transport_maps": f"texthash:{self.etc / 'transport'}",
            "default_transport": "error:not relaying",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "alias_maps": "", "alias_database": "", "local_recipient_maps": "",
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(d),
            "syslog_name": name,
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtpd_banner": "$myhostname ESMTP",
            **settings,
        }
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main_cf.items()))
        (self.etc / "transport").write_text(
            f"{relay_domain} smtp:[127.0.0.1]:{next_hop_port}\n")
        self._postconf("-MX", "smtp/inet")
        if services is None:
            self._postconf("-M", f"127.0.0.1:{self.port}/inet="
                                 f"127.0.0.1:{self.port} inet n - n - - smtpd")
        else:
            with (self.etc / "master.cf").open("a") as master:
                master.write(services)
        self._postconf("-F", "*/*/chroot = n")
        started = subprocess.run([POSTFIX, "-c", str(self.etc), "start"], capture_output=True,
                                 text=True)
        if started.returncode != 0:  # postfix tells why only on a terminal or in its log
            raise RuntimeError(f"postfix -c {self.etc} start failed: {started.stderr}"
                               f"{self.log_text()[-2000:]}")
        wait_for_port(self.port)

    def _postconf(self, *args: str) -> None:
        subprocess.run([POSTCONF, "-c", str(self.etc), *args], check=True,
                       stdout=subprocess.DEVNULL)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def master_pid(self) -> int | None:
        try:
            return int((self.directory / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """``postfix stop``, and ``postfix abort`` if the master is still there after 15 s;
        safe to call whether it started or not."""
        pid = self.master_pid()
        if pid is None:
            return
        subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True)
        deadline = time.monotonic() + 15
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        if os.path.exists(f"/proc/{pid}"):
            subprocess.run([POSTFIX, "-c", str(self.etc), "abort"], capture_output=True)


@contextmanager
def running_postfix(port: int, *, relay_domain: str, next_hop_port: int,
                    settings: Mapping[str, str] = {}, services: str | None = None
                    ) -> Iterator[Postfix]:
    """A started Postfix in a temporary directory (not pytest's: its parents are 0700),
    stopped and removed on the way out whatever happened."""
    with tempfile.TemporaryDirectory(prefix="mailveil-postfix-") as directory:
        postfix = Postfix(Path(directory) / "postfix", port)
        try:
            postfix.start(name="postfix-test", relay_domain=relay_domain,
                          next_hop_port=next_hop_port, settings=settings, services=services)
            yield postfix
        finally:
            postfix.stop()
