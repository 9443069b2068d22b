"""core/jobs/programs.py: a job names a program (an installed console script or a
`module:function` reference), never a module run by name; and databases of the old shape
(a `module` column) are migrated."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest

from core.errors import GroupTuneError
from core.jobs import JobStore, schema
from core.jobs.programs import command_line, resolve

ROOT = Path(__file__).resolve().parent.parent


def test_the_default_program_is_the_installed_grouptune_console_script():
    from core.cli import main

    assert resolve("grouptune") is main
    assert resolve("tests.job_fixtures:main").__module__ == "tests.job_fixtures"
    with pytest.raises(GroupTuneError, match="no installed program 'grouptunez'"):
        resolve("grouptunez")


def test_a_job_is_shown_as_the_command_a_user_would_type(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    job = store.get(store.submit("g", "gradients", ["gradients", "--task", "yelp"]))
    assert job["program"] == "grouptune"
    assert command_line(job) == "grouptune gradients --task yelp"
    with pytest.raises(ValueError, match="program"):
        store.submit("x", "x", ["a"], program="python -m core.cli")


def test_a_version_1_database_is_migrated_to_programs(tmp_path):
    db = tmp_path / "jobs.db"
    old = schema._SCHEMA.replace(
        "program          TEXT    NOT NULL DEFAULT 'grouptune', -- core.jobs.programs",
        "module TEXT NOT NULL DEFAULT 'core.cli',",
    )
    assert old != schema._SCHEMA
    conn = sqlite3.connect(db)
    for statement in filter(str.strip, old.split(";")):
        conn.execute(statement)
    for module in ("core.cli", "tests.job_fixtures"):
        conn.execute(
            "INSERT INTO jobs (name, step, module, argv, created) VALUES (?, 's', ?, '[\"a\"]', 0)",
            (module, module),
        )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    jobs = sorted(JobStore(db).list(), key=lambda j: j["id"])
    assert [j["program"] for j in jobs] == ["grouptune", "tests.job_fixtures:main"]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    conn.close()


def test_the_jobs_floor_names_no_command_of_the_layer_above():
    """No code string in core/jobs/ names core.cli or another top-floor module (the upward
    call the layer contracts cannot see). Docstrings may; so may the migrations, whose
    strings are the old databases' values."""
    found = []
    for path in sorted((ROOT / "core" / "jobs").glob("*.py")):
        tree = ast.parse(path.read_text())
        skip = {id(n.body[0].value) for n in ast.walk(tree) if _has_docstring(n)}
        skip |= {
            id(c)
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "MIGRATIONS"
            for c in ast.walk(n.value)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
            ):
                if any(name in node.value for name in ("core.cli", "core.pipeline", "pages")):
                    found.append(f"{path.name}:{node.lineno}: {node.value[:60]!r}")
    assert not found, found


def _has_docstring(node) -> bool:
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return isinstance(node, kinds) and ast.get_docstring(node, clean=False) is not None
