"""Settings read from the environment live in core.settings: one table, documented in README."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

from core import settings
from core.errors import GroupTuneError

SOURCES = [*sorted((ROOT / "core").rglob("*.py")), *sorted((ROOT / "pages").glob("*.py"))]
SOURCES.append(ROOT / "app.py")


def test_every_variable_the_code_names_is_in_the_table_and_the_readme():
    named = {m for p in SOURCES for m in re.findall(r"GROUPTUNE_[A-Z_]+[A-Z]", p.read_text())}
    assert named and named <= set(settings.SETTINGS), named - set(settings.SETTINGS)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Settings") :]
    assert [n for n in settings.SETTINGS if f"`{n}`" not in section] == []


def test_only_the_settings_module_reads_them():
    read = re.compile(r"(environ\.get|getenv)\(\s*([\"']GROUPTUNE_|REUSE_WORKERS_ENV)")
    assert [str(p.relative_to(ROOT)) for p in SOURCES if read.search(p.read_text())] == []


def test_values_are_checked_and_errors_name_the_variable(monkeypatch):
    monkeypatch.setenv("GROUPTUNE_HEARTBEAT_S", " 0.5 ")
    assert settings.number("GROUPTUNE_HEARTBEAT_S", 2.0) == 0.5
    monkeypatch.delenv("GROUPTUNE_HEARTBEAT_S")
    assert settings.number("GROUPTUNE_HEARTBEAT_S", 2.0) == 2.0
    for bad in ("soon", "nan", "-1"):
        monkeypatch.setenv("GROUPTUNE_MAX_JOBS", bad)
        with pytest.raises(GroupTuneError, match="GROUPTUNE_MAX_JOBS"):
            settings.integer("GROUPTUNE_MAX_JOBS", 1)
    monkeypatch.setenv("GROUPTUNE_MAX_JOBS", "2.5")
    with pytest.raises(GroupTuneError, match="whole number"):
        settings.integer("GROUPTUNE_MAX_JOBS", 1)
    monkeypatch.setenv("GROUPTUNE_PROGRESS", "0")
    assert settings.switched_off("GROUPTUNE_PROGRESS")
    with pytest.raises(KeyError, match="not a GroupTune setting"):
        settings.text("GROUPTUNE_TYPO")
    monkeypatch.setenv("GROUPTUNE_CACHE", "~/elsewhere")
    assert settings.cache_dir().name == "elsewhere" and "~" not in str(settings.cache_dir())
