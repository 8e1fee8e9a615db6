"""``mailveil <role>``: run a role, or migrate the database."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from mailveil import service
from mailveil.config import ConfigError, Settings, from_env
from mailveil.doctor import examine
from mailveil.store import care
from mailveil.store.db import make_engine, migrate, session_factory
from mailveil.store.retention import Retention, purge, verify
from mailveil.web.care.routes import mint_link as mint_care_link

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class JsonLines(logging.Formatter):
    """One JSON object per line, with whatever ``extra=`` the caller attached."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items()
                      if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _archive(settings: Settings, action: str) -> int:
    engine = make_engine(settings.resolved_database_url)
    sessions = session_factory(engine)
    try:
        if action == "verify":
            with sessions() as s:
                bad = [f"{m.table}#{m.id}" for m in verify(s)]
            for item in bad:
                print(f"digest mismatch: {item}")
            print(f"archive verify: {len(bad)} mismatch(es)")
            return 1 if bad else 0
        with sessions() as s, s.begin():
            purged = purge(s, Retention(settings.retention_body, settings.retention_metadata),
                           service.now())
        print(f"archive purge: {purged.bodies} bodies removed, {purged.records} records deleted")
        return 0
    finally:
        engine.dispose()


def _care(settings: Settings, action: str, email: str | None) -> int:
    """Agents of the care console; each change is in the audit log, by the operator."""
    engine = make_engine(settings.resolved_database_url)
    now = service.now()
    try:
        with session_factory(engine)() as s, s.begin():
            if action == "list-agents":
                for agent in care.agents(s):
                    print(f"{agent.email}\tsince {agent.created_at.isoformat()}")
                return 0
            assert email is not None
            if action == "remove-agent":
                if not care.remove_agent(s, email, now):
                    print(f"mailveil: no agent {email}", file=sys.stderr)
                    return 1
                care.audit(s, None, "remove-agent", email, now)
                print(f"removed {email}: their sessions and links stop working now")
                return 0
            agent = care.add_agent(s, email, now)
            care.audit(s, None, "add-agent", agent.email, now)
            url, expires_at = mint_care_link(s, service.portal_url(settings), agent.id,
                                             settings.portal_link_lifetime, now)
            print(f"one-time sign-in link for {agent.email} (until {expires_at.isoformat()}):")
            print(url)
            return 0
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailveil", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for role in service.ROLES:
        commands.add_parser(role, help="smtp + worker + web in one process" if role == "serve"
                            else f"run the {role} role only")
    commands.add_parser("migrate", help="apply database migrations")
    doctor = commands.add_parser("doctor", help="check DNS, certificates, smarthost, database "
                                                "and clamd of this configuration")
    doctor.add_argument("--ip", action="append", default=[],
                        help="an address mail leaves from, for the SPF check (default: the "
                             "MX hosts' addresses); may be repeated")
    archive = commands.add_parser("archive", help="archive maintenance")
    archive.add_argument("action", choices=["verify", "purge"],
                         help="verify: check stored messages against their SHA-256; "
                              "purge: apply the retention settings now")
    care_parser = commands.add_parser("care", help="agents of the care console")
    care_parser.add_argument("action", choices=["add-agent", "list-agents", "remove-agent"],
                             help="add-agent also prints a one-time sign-in link (run it "
                                  "again for a new one)")
    care_parser.add_argument("email", nargs="?")
    args = parser.parse_args(argv)
    if args.command == "care" and args.action != "list-agents" and not args.email:
        parser.error(f"care {args.action} needs an EMAIL")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=os.environ.get("MAILVEIL_LOG_LEVEL", "INFO"), handlers=[handler])
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command
    try:
        settings = from_env(os.environ)
    except ConfigError as exc:
        print(f"mailveil: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        migrate(settings.resolved_database_url)
        return 0
    if args.command == "archive":
        return _archive(settings, args.action)
    if args.command == "care":
        return _care(settings, args.action, args.email)
    if args.command == "doctor":
        findings = asyncio.run(examine(settings, args.ip))
        for finding in findings:
            print(finding)
        return 0 if all(f.ok for f in findings) else 1
    asyncio.run(service.run(settings, args.command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
