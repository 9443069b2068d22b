"""Every `grouptune …` command that the README, docs/ or a user-facing string names exists.

A move once dropped the whole `grouptune jobs` group while README, the dashboard's hints and
the engine's own messages still named it; this scan makes such a loss fail the suite.
"""

from __future__ import annotations

import re

import pytest
from conftest import ROOT
from typer.testing import CliRunner

from core.cli import app

# "grouptune <command>" or "grouptune <group> <sub>|<sub>…"; a word followed by ":" is a
# message's prefix ("grouptune runner: …"), not a command
MENTION = re.compile(r"\bgrouptune ([a-z][a-z-]*)(?![a-z:-])(?: ([a-z][a-z|-]*)(?![a-z:-]))?")
PLACES = ("README.md", "docs", "core", "pages", "app.py", "sample_data/README.md")


def _texts():
    for place in PLACES:
        path = ROOT / place
        files = [path] if path.is_file() else sorted(path.rglob("*"))
        for f in files:
            if f.is_file() and f.suffix in (".md", ".py"):
                yield f, f.read_text(encoding="utf-8")


def _groups() -> dict[str, set[str]]:
    """{group name: its subcommands} of the CLI's command groups (e.g. jobs)."""
    import typer.main

    click_app = typer.main.get_command(app)
    return {
        name: set(cmd.commands)
        for name, cmd in click_app.commands.items()
        if hasattr(cmd, "commands")
    }


def named_commands() -> dict[tuple[str, ...], str]:
    """{command words: where it is first named} over every place users read."""
    groups, found = _groups(), {}
    for path, text in _texts():
        for m in MENTION.finditer(text):
            first, rest = m.group(1), m.group(2)
            where = f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}"
            if first in groups and rest:
                for sub in rest.split("|"):
                    found.setdefault((first, sub), where)
            else:
                found.setdefault((first,), where)
    return found


def test_the_scan_finds_the_documented_commands():
    named = named_commands()
    for words in [("run",), ("gradients",), ("jobs", "list"), ("jobs", "resume"), ("app",)]:
        assert words in named, words


@pytest.mark.parametrize("words", sorted(named_commands()), ids=" ".join)
def test_every_named_command_exists(words):
    result = CliRunner().invoke(app, [*words, "--help"])
    where = named_commands()[words]
    assert result.exit_code == 0, f"`grouptune {' '.join(words)}` ({where}): {result.output}"
