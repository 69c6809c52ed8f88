"""Every ``lungseg ...`` and ``python workflow_scripts/....py`` command line in the README and
docs/*.md names a real subcommand (or script) and only options its parser knows.

Commands are taken from code spans and code blocks (continuation lines joined); placeholders
(DIR, ``[--x ...]``) are fine, option names are what is checked, against the parser the command
really builds (:func:`lungseg.core.rule.build_parser` of the stage function).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

from lungseg import cli
from lungseg.core.rule import build_parser
from lungseg.stages import by_command, by_rule, resolve

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`\n]+)`")
LUNGSEG = re.compile(r"(?:^|[\s/(])lungseg\s+([a-z][a-z0-9-]*)((?:\s+[^\s|;&#]+)*)")
SCRIPT = re.compile(r"python\s+workflow_scripts/(\w+)\.py((?:\s+[^\s|;&#]+)*)")
OPTION = re.compile(r"(?<![\w-])(--[a-zA-Z][\w-]*)")


#: a code span that is a command line (not an error message quoting "lungseg ...")
SPAN_COMMAND = re.compile(r"^(?:[\w./-]*/)?(?:lungseg|python)\s")


def snippets(text: str) -> list[str]:
    """Lines of code blocks (``\\`` continuations joined) and code spans that are commands."""
    found = []
    for block in FENCE.findall(text):
        found += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    without_blocks = FENCE.sub("", text)
    spans = SPAN.findall(without_blocks.replace("\\|", "|"))
    return found + [span for span in spans if SPAN_COMMAND.match(span)]


def commands() -> list[tuple[str, str, str, str]]:
    """(doc, kind, name, rest of the line) of every command line in the docs."""
    found = []
    for doc in DOCS:
        for snippet in snippets(doc.read_text()):
            snippet = snippet.split(" #", 1)[0]
            found += [(doc.name, "lungseg", m[0], m[1]) for m in LUNGSEG.findall(snippet)]
            found += [(doc.name, "script", m[0], m[1]) for m in SCRIPT.findall(snippet)]
    return found


@cache
def known_options(kind: str, name: str) -> frozenset[str] | None:
    """The option strings of a subcommand's or workflow script's parser; None: no such one."""
    if kind == "lungseg":
        if name not in by_command():
            return None
        func = cli.stage_function(name)
    else:
        if not (REPO / "workflow_scripts" / f"{name}.py").exists() or name not in by_rule():
            return None
        func = resolve(by_rule()[name].function)
    return frozenset(build_parser(func)._option_string_actions)


COMMANDS = commands()


def test_the_docs_hold_commands():
    kinds = {kind for _doc, kind, _name, _rest in COMMANDS}
    assert len(COMMANDS) > 50 and kinds == {"lungseg", "script"}, len(COMMANDS)


@pytest.mark.parametrize(
    ("doc", "kind", "name", "rest"),
    COMMANDS,
    ids=[f"{doc}:{kind}:{name}" for doc, kind, name, _ in COMMANDS],
)
def test_a_documented_command_parses(doc, kind, name, rest):
    options = known_options(kind, name)
    assert options is not None, f"{doc}: no {kind} command {name!r}"
    unknown = sorted({o for o in OPTION.findall(rest) if o not in options})
    assert not unknown, f"{doc}: `{kind} {name}` has no option(s) {unknown}"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("lungseg train --epochs 3", [("lungseg", "train", " --epochs 3")]),
        (
            ".venv/bin/lungseg predict scans/ --out out",
            [("lungseg", "predict", " scans/ --out out")],
        ),
        ("python workflow_scripts/index.py --help", [("script", "index", " --help")]),
        ("the lungseg.core.settings module", []),
        ("lungseg COMMAND", []),
    ],
)
def test_the_extraction_itself(line, expected):
    found = [("lungseg", m[0], m[1]) for m in LUNGSEG.findall(line)]
    found += [("script", m[0], m[1]) for m in SCRIPT.findall(line)]
    assert found == expected
