"""deploy/: the systemd units parse and sandbox every role, and the example settings are
ones mailveil starts with. (deploy/postfix runs in tests/e2e/test_postfix_front.py; the
container image cannot be built here: no container engine runs on this machine.)"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailveil import service
from mailveil.config import from_env

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SYSTEMD = DEPLOY / "systemd"
UNITS = sorted(p.name for p in SYSTEMD.glob("*.service"))
SANDBOX = SYSTEMD / "mailveil-.service.d" / "sandbox.conf"
MAILVEIL = str(Path(sys.executable).parent / "mailveil")


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read(path)
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_units_with_their_drop_in(tmp_path: Path) -> None:
    """As installed: the shared drop-in applies to each unit (systemd-analyze reads it from
    the unit path), paths moved to this checkout. A warning fails the test too."""
    shutil.copytree(SYSTEMD, tmp_path, dirs_exist_ok=True)
    (tmp_path / "mailveil.env").write_text("")
    for path in [*tmp_path.glob("*.service"), tmp_path / SANDBOX.relative_to(SYSTEMD)]:
        path.write_text(path.read_text()
                        .replace("/opt/mailveil/venv/bin/mailveil", MAILVEIL)
                        .replace("/etc/mailveil/mailveil.env", str(tmp_path / "mailveil.env")))
    names = [name.replace("@.", "@1.") for name in UNITS]
    verified = subprocess.run(["systemd-analyze", "verify", *names], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"})
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")


def test_each_role_has_a_unit_and_every_unit_runs_a_role() -> None:
    roles = {unit(SYSTEMD / name)["Service"]["ExecStart"].split()[-1] for name in UNITS}
    assert roles == {"smtp", "worker", "web"} and roles <= set(service.ROLES)


def test_every_role_is_sandboxed_as_a_dedicated_user() -> None:
    shared = unit(SANDBOX)["Service"]
    assert shared["User"] == "mailveil"
    assert (shared["ProtectSystem"], shared["NoNewPrivileges"]) == ("strict", "yes")
    data_dir = shared["Environment"].removeprefix("MAILVEIL_DATA_DIR=")
    assert shared["ReadWritePaths"] == data_dir == f"/var/lib/{shared['StateDirectory']}"
    assert shared["CapabilityBoundingSet"] == ""
    # Only the listener may bind port 25, and it needs nothing else.
    for name in UNITS:
        own = unit(SYSTEMD / name)["Service"]
        assert "User" not in own and "ProtectSystem" not in own  # the drop-in's, not its own
        granted = own.get("AmbientCapabilities", "")
        assert granted == ("CAP_NET_BIND_SERVICE" if name == "mailveil-smtp.service" else "")


def test_the_example_settings_are_accepted() -> None:
    lines = (SYSTEMD / "mailveil.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    settings = from_env(env)
    assert settings.policy_listen is not None and settings.trusted_peers == ("127.0.0.1/32",)
    assert settings.trusted_authserv_id == "mx.reply.example.com"
