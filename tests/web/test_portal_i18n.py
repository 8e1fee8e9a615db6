"""The portal's languages: its catalogs complete and in step with the templates, the
visitor's language and time zone picked right, dates written for them."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from string import Formatter
from zoneinfo import ZoneInfo

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

from mailveil.web.portal.i18n import DOMAIN, LANGUAGES, LOCALES_DIR, negotiate, when, zone

REPO = Path(__file__).parents[2]
TRANSLATED = [lang for lang in LANGUAGES if lang != "en"]


def _po(lang: str):  # type: ignore[no-untyped-def]
    with (LOCALES_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as f:
        return read_po(f, locale=lang)


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in Formatter().parse(text) if name is not None}


@pytest.mark.parametrize("lang", TRANSLATED)
def test_catalog_is_complete_keeps_placeholders_and_is_compiled(lang: str) -> None:
    catalog = _po(lang)
    assert not catalog.fuzzy
    with (REPO / "mailveil/web/portal/babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)  # type: ignore[no-untyped-call]
    in_templates = {m for _, _, m, _, _ in extract_from_dir(REPO, method_map=method_map,
                                                            options_map=options_map)}
    assert {m.id for m in catalog if m.id} == in_templates
    for m in catalog:
        if m.id:
            assert m.string and not m.fuzzy, m.id
            assert _fields(m.string) == _fields(m.id), (m.id, m.string)
    fresh = io.BytesIO()
    write_mo(fresh, catalog)
    fresh.seek(0)
    with (LOCALES_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.mo").open("rb") as f:
        compiled = read_mo(f)
    assert {m.id: m.string for m in compiled if m.id} == {
        m.id: m.string for m in read_mo(fresh) if m.id}


@pytest.mark.parametrize(("chosen", "account", "accept", "expected"), [
    ("th", "fr", "en", "th"),
    (None, "fr-CH", "th", "fr"),
    (None, "de", "de-DE,th;q=0.8,fr;q=0.9", "fr"),
    (None, None, "th-TH;q=0.5, *;q=0.1", "th"),
    (None, None, "fr;q=0, es", "en"),
    (None, None, "garbage;q=x,,", "en"),
    ("xx", None, None, "en"),
])
def test_negotiate(chosen: str | None, account: str | None, accept: str | None,
                   expected: str) -> None:
    assert negotiate(chosen, account, accept) == expected


def test_zone_takes_only_real_zone_names() -> None:
    assert zone("Asia/Bangkok").key == "Asia/Bangkok"
    for bad in (None, "", "Not/AZone", "../../etc/passwd", "x" * 100):
        assert zone(bad).key == "UTC"


def test_dates_are_written_in_the_visitors_zone_and_language() -> None:
    moment = datetime(2027, 6, 1, 2, 30, tzinfo=UTC)
    bangkok = ZoneInfo("Asia/Bangkok")
    assert when(moment, "en", bangkok) == "Jun 1, 2027 9:30\u202fAM"
    assert when(moment, "fr", bangkok) == "1 juin 2027 09:30"
    assert when(moment, "fr", ZoneInfo("America/New_York")) == "31 mai 2027 22:30"
    assert "มิ.ย." in when(moment, "th", bangkok)
