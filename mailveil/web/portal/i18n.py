"""The portal's languages: its own gettext domain ``portal`` (every string is in the
templates, so the relay's ``mailveil`` catalogs stay as they are), the visitor's language
and time zone, dates written for them.

After changing a template's text, from the repository root::

    .venv/bin/pybabel extract -F mailveil/web/portal/babel.cfg \\
        -o mailveil/web/portal/locales/portal.pot --add-location=file --sort-output .
    .venv/bin/pybabel update -i mailveil/web/portal/locales/portal.pot \\
        -d mailveil/web/portal/locales -D portal --no-fuzzy-matching --ignore-obsolete
    # translate the new entries, then:
    .venv/bin/pybabel compile -d mailveil/web/portal/locales -D portal
"""

from __future__ import annotations

import gettext
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.dates import format_date, format_time

DOMAIN = "portal"
LOCALES_DIR = Path(__file__).parent / "locales"
LANGUAGES = ("en", "fr", "th")
NAMES = {"en": "English", "fr": "Français", "th": "ไทย"}  # each in its own language
UTC_ZONE = "UTC"


def language_of(tag: str | None) -> str | None:
    """The portal language for a locale tag (``fr-CH`` → ``fr``), or ``None``."""
    if not tag:
        return None
    language = tag.strip().replace("_", "-").split("-")[0].lower()
    return language if language in LANGUAGES else None


def negotiate(chosen: str | None, account: str | None, accept_language: str | None) -> str:
    """The switcher's choice first, then the supplier's account locale, then the browser's
    preferences, then English."""
    for tag in (chosen, account):
        if (language := language_of(tag)) is not None:
            return language
    for tag in _by_quality(accept_language or ""):
        if (language := language_of(tag)) is not None:
            return language
    return LANGUAGES[0]


def _by_quality(header: str) -> list[str]:
    ranked: list[tuple[float, int, str]] = []
    for i, item in enumerate(header.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        if tag and quality > 0:
            ranked.append((-quality, i, tag))
    return [tag for _, _, tag in sorted(ranked)]


def zone(name: str | None) -> ZoneInfo:
    """The visitor's IANA time zone as their browser reported it; UTC when unknown."""
    if name and len(name) <= 64 and all(c.isalnum() or c in "/_+-" for c in name):
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo(UTC_ZONE)


def when(moment: datetime, language: str, tz: ZoneInfo) -> str:
    """A moment as the visitor reads dates, in their own time zone."""
    local, locale = moment.astimezone(tz), Locale(language)
    return f"{format_date(local, 'medium', locale)} {format_time(local, 'short', locale=locale)}"


@lru_cache(maxsize=len(LANGUAGES))
def translations(language: str) -> gettext.NullTranslations:
    return gettext.translation(DOMAIN, LOCALES_DIR, languages=[language], fallback=True)
