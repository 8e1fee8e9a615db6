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
from mailveil.config import ConfigError, from_env
from mailveil.store.db import migrate

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailveil", description=__doc__)
    parser.add_argument("role", choices=[*service.ROLES, "migrate"],
                        help="serve = smtp + worker + web in one process")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=os.environ.get("MAILVEIL_LOG_LEVEL", "INFO"), handlers=[handler])
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command
    try:
        settings = from_env(os.environ)
    except ConfigError as exc:
        print(f"mailveil: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.role == "migrate":
        migrate(settings.resolved_database_url)
        return 0
    asyncio.run(service.run(settings, args.role))
    return 0


if __name__ == "__main__":
    sys.exit(main())
