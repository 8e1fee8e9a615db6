"""What the relay says to people, in their language: gettext catalogs built with Babel.

English is the source language (the msgids); French, Thai, German and Spanish live in
``locales/<lang>/LC_MESSAGES/mailveil.po``. The compiled ``.mo`` files are committed, so a
deployment needs no build step; ``tests/i18n/test_catalogs.py`` fails when a catalog is
incomplete, fuzzy or not recompiled. Placeholders are ``str.format`` names (``{subject}``)
that translators move freely but must keep.

After changing a translatable string, from the repository root::

    .venv/bin/pybabel extract -F mailveil/i18n/babel.cfg -o mailveil/i18n/mailveil.pot \\
        --add-comments=TRANSLATORS: --add-location=file --sort-output --project=mailveil .
    .venv/bin/pybabel update -i mailveil/i18n/mailveil.pot -d mailveil/i18n/locales \\
        -D mailveil --no-fuzzy-matching --ignore-obsolete
    # translate every new or changed entry in the four .po files, then:
    .venv/bin/pybabel compile -d mailveil/i18n/locales -D mailveil
"""

from __future__ import annotations

import gettext
from functools import lru_cache
from pathlib import Path

from babel import Locale, localedata
from babel.core import parse_locale

DOMAIN = "mailveil"
LOCALES_DIR = Path(__file__).parent / "locales"
SOURCE_LANGUAGE = "en"
LANGUAGES = (SOURCE_LANGUAGE, "fr", "th", "de", "es")


@lru_cache(maxsize=256)
def resolve(locale: str) -> Locale:
    """The locale we actually speak for a party's locale tag: one of ``LANGUAGES``, keeping
    the region when Babel knows it (so ``en-GB`` gets British dates), English otherwise.

    Accepts POSIX and BCP 47 forms in any case: ``fr``, ``fr_FR``, ``fr-CH``, ``TH-th``.
    """
    try:
        parts = parse_locale(locale.strip().replace("-", "_"))
    except ValueError:
        return Locale(SOURCE_LANGUAGE)
    language, territory = parts[0].lower(), parts[1]
    if language not in LANGUAGES:
        return Locale(SOURCE_LANGUAGE)
    if territory and localedata.exists(f"{language}_{territory}"):
        return Locale(language, territory)
    return Locale(language)


def translator(locale: str) -> gettext.NullTranslations:
    """Translations for a party's locale tag; unknown languages fall back to English."""
    return _catalog(resolve(locale).language)


@lru_cache(maxsize=len(LANGUAGES))
def _catalog(language: str) -> gettext.NullTranslations:
    return gettext.translation(DOMAIN, LOCALES_DIR, languages=[language], fallback=True)
