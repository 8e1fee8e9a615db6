"""The catalogs are complete, compiled and in step with the code, and a party's locale tag
picks the right one."""

from __future__ import annotations

import io
from pathlib import Path
from string import Formatter

import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

from mailveil.i18n import DOMAIN, LANGUAGES, LOCALES_DIR, SOURCE_LANGUAGE, resolve, translator

REPO = Path(__file__).parents[2]
TRANSLATED = [lang for lang in LANGUAGES if lang != SOURCE_LANGUAGE]
MessageId = str | tuple[str, ...]


def read_catalog(lang: str) -> Catalog:
    with (LOCALES_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as f:
        return read_po(f, locale=lang)


def entries(catalog: Catalog) -> list[Message]:
    return [m for m in catalog if m.id]


def forms(text: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Every form of a msgid or msgstr (``read_mo`` gives plural forms as a list)."""
    return tuple(text) if isinstance(text, tuple | list) else (text or "",)


def fields(text: str) -> set[str]:
    """Placeholder names; raises on a stray brace, which would crash ``str.format``."""
    return {name for _, name, _, _ in Formatter().parse(text) if name is not None}


def as_dict(catalog: Catalog) -> dict[tuple[str, ...], tuple[str, ...]]:
    return {forms(m.id): forms(m.string) for m in entries(catalog)}


def code_messages() -> set[MessageId]:
    with (REPO / "mailveil" / "i18n" / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)  # type: ignore[no-untyped-call]
    return {message for _, _, message, _, _ in
            extract_from_dir(REPO, method_map=method_map, options_map=options_map)}


@pytest.mark.parametrize("lang", TRANSLATED)
def test_catalog_is_complete_and_not_fuzzy(lang: str) -> None:
    catalog = read_catalog(lang)
    assert catalog.locale is not None and catalog.locale.language == lang
    assert not catalog.fuzzy
    for message in entries(catalog):
        assert not message.fuzzy, message.id
        translations = forms(message.string)
        assert all(translations), message.id
        if message.pluralizable:
            assert len(translations) == catalog.num_plurals, message.id


@pytest.mark.parametrize("lang", TRANSLATED)
def test_translations_keep_every_placeholder(lang: str) -> None:
    for message in entries(read_catalog(lang)):
        expected = set().union(*(fields(f) for f in forms(message.id)))
        for translation in forms(message.string):
            assert fields(translation) == expected, (message.id, translation)


@pytest.mark.parametrize("lang", TRANSLATED)
def test_compiled_catalog_matches_po(lang: str) -> None:
    fresh = io.BytesIO()
    write_mo(fresh, read_catalog(lang))
    fresh.seek(0)
    with (LOCALES_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.mo").open("rb") as f:
        committed = read_mo(f)
    assert as_dict(committed) == as_dict(read_mo(fresh)), "run pybabel compile"
    assert committed.plural_forms == read_catalog(lang).plural_forms


@pytest.mark.parametrize("lang", TRANSLATED)
def test_catalog_holds_exactly_the_messages_in_code(lang: str) -> None:
    in_code = code_messages()
    in_catalog = {m.id for m in entries(read_catalog(lang))}
    assert in_code, "extraction found nothing: is babel.cfg right?"
    assert in_code - in_catalog == set(), "untranslated: run pybabel extract and update"
    assert in_catalog - in_code == set(), "stale entries: run pybabel update --ignore-obsolete"


def test_template_is_in_step_with_code() -> None:
    with (LOCALES_DIR.parent / f"{DOMAIN}.pot").open("rb") as f:
        template = read_po(f)
    assert {m.id for m in entries(template)} == code_messages()


@pytest.mark.parametrize(("tag", "hello"), [
    ("fr", "Bonjour,"), ("fr_FR", "Bonjour,"), ("fr-CH", "Bonjour,"), ("FR-ch", "Bonjour,"),
    ("fr_CA.UTF-8", "Bonjour,"), ("th", "เรียน ผู้ใช้บริการ"), ("th-TH", "เรียน ผู้ใช้บริการ"),
    ("de-AT", "Guten Tag,"), ("de", "Guten Tag,"), ("es_MX", "Hola:"), ("ES", "Hola:"),
    ("en", "Hello,"), ("en-GB", "Hello,"),
])
def test_translator_accepts_posix_and_bcp47_tags(tag: str, hello: str) -> None:
    assert translator(tag).gettext("Hello,") == hello


@pytest.mark.parametrize("tag", ["pt", "pt-BR", "zh_Hant_TW", "", "  ", "x", "12"])
def test_other_languages_fall_back_to_english(tag: str) -> None:
    assert translator(tag).gettext("Hello,") == "Hello,"
    assert str(resolve(tag)) == "en"


@pytest.mark.parametrize(("tag", "locale"), [
    ("en-GB", "en_GB"), ("fr-CH", "fr_CH"), ("th-TH", "th_TH"), ("fr_XX", "fr"), ("pt_PT", "en"),
])
def test_resolve_keeps_a_known_region_for_dates(tag: str, locale: str) -> None:
    assert str(resolve(tag)) == locale


def test_plural_forms_follow_each_language() -> None:
    singular, plural = next(forms(m.id) for m in entries(read_catalog("fr")) if m.pluralizable)
    assert "{days} day after" in singular and "{days} days after" in plural
    fr, th = translator("fr"), translator("th")
    assert "1 jour " in fr.ngettext(singular, plural, 1).format(days=1)
    assert "2 jours " in fr.ngettext(singular, plural, 2).format(days=2)
    assert th.ngettext(singular, plural, 1) == th.ngettext(singular, plural, 7)
