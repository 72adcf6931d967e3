"""Every string we show is marked for translation, and the French and German catalogues
(locale/<language>/LC_MESSAGES/django.po) translate every one of them, none fuzzy.

- The catalogues against the code: `makemessages` (as `make messages` runs it) on a copy of
  what we translate (launcher/, templates/, kheops_ohif/) gives the strings marked today;
  the committed catalogues must hold exactly those, each translated, none fuzzy or obsolete,
  and pass `msgfmt --check` (placeholders, plural forms).
- What is not marked at all: text in our templates outside {% translate %} and
  {% blocktranslate %}, words in our scripts that do not come from the translated data
  block, and plain English literals handed to the refusals clinicians read.

System check messages are not translated: they are for operators, in the server's log.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polib
import pytest
from django.template.base import Lexer, TokenType

REPO = Path(__file__).resolve().parents[1]
LANGUAGES = ("fr", "de")
# What `make messages` reads (its --ignore options leave out everything else).
TRANSLATED_SOURCES = ("launcher", "templates", "kheops_ohif")


def catalogue(language: str) -> Path:
    return REPO / "locale" / language / "LC_MESSAGES" / "django.po"


def catalogue_problems(po: polib.POFile) -> list[str]:
    """What keeps a catalogue from being complete: untranslated, fuzzy or obsolete entries."""
    problems = []
    for entry in po:
        if entry.obsolete:
            problems.append(f"obsolete: {entry.msgid!r}")
        elif "fuzzy" in entry.flags:
            problems.append(f"fuzzy: {entry.msgid!r}")
        elif not entry.translated():
            problems.append(f"untranslated: {entry.msgid!r}")
    if po.metadata_is_fuzzy:
        problems.append("the header is fuzzy")
    return problems


@pytest.fixture(scope="module")
def marked_strings(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The msgids `makemessages` finds in the code today (with their plural, if any)."""
    if shutil.which("xgettext") is None:
        pytest.fail("GNU gettext is missing: `make prepare` installs the Debian package gettext")
    copy = tmp_path_factory.mktemp("messages")
    for name in TRANSLATED_SOURCES:
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "locale").mkdir()
    # No settings: makemessages then writes into ./locale of the copy only.
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run(
        [sys.executable, "-m", "django", "makemessages", "-l", "fr", "--no-obsolete"],
        cwd=copy,
        env=env,
        check=True,
        capture_output=True,
    )
    found = polib.pofile(str(copy / "locale" / "fr" / "LC_MESSAGES" / "django.po"))
    return {entry.msgid + "\x00" + entry.msgid_plural for entry in found}


@pytest.mark.parametrize("language", LANGUAGES)
def test_each_catalogue_holds_exactly_the_marked_strings(
    language: str, marked_strings: set[str]
) -> None:
    po = polib.pofile(str(catalogue(language)))
    committed = {entry.msgid + "\x00" + entry.msgid_plural for entry in po if not entry.obsolete}
    missing = sorted(s.split("\x00")[0] for s in marked_strings - committed)
    stale = sorted(s.split("\x00")[0] for s in committed - marked_strings)
    assert not missing, f"{language}: not in the catalogue (run `make messages`): {missing}"
    assert not stale, f"{language}: no longer in the code (run `make messages`): {stale}"
    assert len(marked_strings) > 150  # the extraction found our strings at all


@pytest.mark.parametrize("language", LANGUAGES)
def test_each_catalogue_is_translated_without_fuzzy_entries(language: str) -> None:
    po = polib.pofile(str(catalogue(language)))
    assert po.metadata["Language"] == language
    assert catalogue_problems(po) == []
    check = subprocess.run(
        ["msgfmt", "--check", "-o", os.devnull, str(catalogue(language))],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_the_catalogue_check_fails_on_a_missing_or_fuzzy_entry() -> None:
    po = polib.pofile(str(catalogue("fr")))
    po[0].msgstr = ""
    po[1].flags.append("fuzzy")
    po.append(polib.POEntry(msgid="Gone", msgstr="Parti", obsolete=True))
    problems = catalogue_problems(po)
    assert problems == [
        f"untranslated: {po[0].msgid!r}",
        f"fuzzy: {po[1].msgid!r}",
        "obsolete: 'Gone'",
    ]


# --- Text that was never marked -------------------------------------------------------------

# Words that are the same in every language: product names and the HTTP status line.
UNTRANSLATED_WORDS = {"KHEOPS", "OHIF", "HTTP"}
USER_FACING_ATTRIBUTES = re.compile(r'\b(?:alt|title|aria-label|placeholder)="([^"]*)"')


def untranslated_template_text(source: str) -> list[str]:
    """Words of a template outside {% translate %}/{% blocktranslate %} and comments."""
    page = ""  # the template's text, each tag and variable a mark of its own
    skipping: str | None = None
    for token in Lexer(source).tokenize():
        if token.token_type == TokenType.BLOCK:
            name = token.contents.split()[0]
            if skipping is None and name in ("blocktranslate", "blocktrans", "comment"):
                skipping = "end" + name
            elif name == skipping:
                skipping = None
            page += "\x01"
        elif token.token_type == TokenType.VAR:
            page += "\x01"
        elif token.token_type == TokenType.TEXT and not skipping:
            page += token.contents
    found = [value for value in USER_FACING_ATTRIBUTES.findall(page) if value.strip("\x01 ")]
    text = re.sub(r"<[^>]*>", " ", page)  # tags (their attributes: above)
    text = re.sub(r"&[a-z]+;|&#[0-9]+;", " ", text)
    return found + [
        word
        for word in re.findall(r"[^\W\d_][\w'\u2019-]*", text)
        if word not in UNTRANSLATED_WORDS
    ]


def our_templates() -> list[Path]:
    return sorted((REPO / "templates").rglob("*.html"))


@pytest.mark.parametrize("path", our_templates(), ids=lambda p: str(p.relative_to(REPO)))
def test_templates_have_no_text_outside_translate_tags(path: Path) -> None:
    assert untranslated_template_text(path.read_text(encoding="utf-8")) == []


def test_the_template_scan_finds_untranslated_text() -> None:
    source = (
        '{% load i18n %}<h1>{% translate "Fine" %}</h1><p title="Hover me">Not marked</p>'
        "{% blocktranslate %}Also fine {{ x }}{% endblocktranslate %}<p>HTTP {{ status }}</p>"
    )
    assert untranslated_template_text(source) == ["Hover me", "Not", "marked"]


JS_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'')
# Prose: a capitalised word ("Copied"), or two words in a row ("access ends").
PROSE = re.compile(r"^\s*[A-Z][a-z]+\b|\b[A-Za-z]{2,} [A-Za-z]{2,}\b")
# A literal put straight into what the page shows.
SHOWN = re.compile(
    r"\.(?:textContent|innerText|title|alt)\s*=\s*(?:'[^']*[A-Za-z][^']*'|\"[^\"]*[A-Za-z][^\"]*\")"
)


def shown_literals(source: str) -> list[str]:
    """String literals of a script that read as words shown to a person, and literals put
    straight into the page's text."""
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    source = re.sub(r"(?m)(^|[;{}(),]\s*)//[^\n]*", r"\1", source)
    literals = [m.group()[1:-1] for m in JS_STRING.finditer(source)]
    found = [text for text in literals if PROSE.search(text) and text != "use strict"]
    return found + SHOWN.findall(source)


def our_scripts() -> list[Path]:
    return sorted((REPO / "static" / "launcher").glob("*.js"))


@pytest.mark.parametrize("path", our_scripts(), ids=lambda p: p.name)
def test_scripts_show_only_words_from_the_translated_data_block(path: Path) -> None:
    assert shown_literals(path.read_text(encoding="utf-8")) == []


def test_the_script_scan_finds_words_not_from_the_data_block() -> None:
    source = """
      // A comment is no text.
      var a = "kheops-ohif-banner", b = "500 14px/1.2 system-ui, sans-serif";
      link.textContent = 'again';
      status.textContent = copied ? "Copied" : text.selected;
      var c = "access ends soon";
    """
    assert shown_literals(source) == [
        "Copied",
        "access ends soon",
        ".textContent = 'again'",
    ]


def test_the_scripts_use_only_texts_the_data_block_has() -> None:
    from launcher.viewer import VIEWER_TEXT

    used = set()
    for name in ("banner.js", "launch.js"):
        used |= set(re.findall(r"\btext\.(\w+)", (REPO / "static/launcher" / name).read_text()))
    assert used and used <= set(VIEWER_TEXT), used - set(VIEWER_TEXT)


# Calls whose text a clinician reads (the error page, the viewer's message), by the
# position of their message and advice arguments.
REFUSALS = {"ViewerRefused": (1,), "LaunchFailed": (2,), "_bad_request": (0,)}
TRANSLATING_CALLS = {"gettext_lazy", "format_lazy", "wait_then"}


def untranslated_refusals(source: str) -> list[str]:
    """Refusals built from a plain string, or from a module constant that is one."""
    tree = ast.parse(source)
    constants = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }

    def translated(value: ast.expr) -> bool:
        if isinstance(value, ast.Name) and value.id in constants:
            return translated(constants[value.id])
        if isinstance(value, ast.Attribute):  # services.NOT_YOURS: checked in its module
            return True
        if isinstance(value, ast.Call):
            function = value.func
            name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", "")
            return name in TRANSLATING_CALLS
        return not isinstance(value, ast.Constant | ast.JoinedStr | ast.BinOp)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", "")
            if name not in REFUSALS:
                continue
            shown = [node.args[i] for i in REFUSALS[name] if i < len(node.args)]
            shown += [k.value for k in node.keywords if k.arg in ("message", "advice")]
            found += [ast.unparse(value) for value in shown if not translated(value)]
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "ADVICE" for t in node.targets
        ):
            assert isinstance(node.value, ast.Dict)
            found += [ast.unparse(v) for v in node.value.values if not translated(v)]
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Attribute) and t.attr == "advice" for t in node.targets
        ):
            found += [ast.unparse(node.value)] if not translated(node.value) else []
    return found


@pytest.mark.parametrize("module", ["services.py", "views.py"])
def test_refusals_shown_to_clinicians_are_marked_for_translation(module: str) -> None:
    assert untranslated_refusals((REPO / "launcher" / module).read_text()) == []


def test_the_refusal_scan_finds_plain_english() -> None:
    source = """
GONE = "It is gone."
FINE = gettext_lazy("Fine.")
ADVICE = {1: FINE, 2: "Try again."}
def f(x):
    raise ViewerRefused(403, GONE, advice=FINE)
    raise LaunchFailed(o, 400, f"Bad {x}.")
    failure.advice = "Wait."
"""
    assert sorted(untranslated_refusals(source)) == [
        "'Try again.'",
        "'Wait.'",
        "GONE",
        "f'Bad {x}.'",
    ]
