"""core.stages: the one table of the pipeline's stages, and the modules that read it."""

from __future__ import annotations

import importlib

import pytest
from conftest import ROOT

from core.accounting import Accounting
from core.errors import GroupTuneError
from core.stages import COSTS, STAGES
from core.workspace import Workspace


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_each_stage_names_a_real_freshness_rule_and_command(stage):
    module, function = stage.freshness.split(":")
    assert callable(getattr(importlib.import_module(module), function))
    from typer.main import get_command

    from core.cli import app

    assert stage.verb in get_command(app).commands


def test_accounting_takes_exactly_the_tables_costs(tmp_path):
    acct = Accounting(Workspace(tmp_path))
    entry = {"flops": 1.0, "wall_seconds": 0.5}
    for cost in COSTS:
        acct.record(cost, entry)
    assert set(acct.read()) == set(COSTS)
    with pytest.raises(GroupTuneError, match="unknown accounting stage"):
        acct.record("training", entry)  # a stage's name is not one of its cost entries


def test_the_dashboard_lists_the_tables_stages_in_order():
    from core.views.stages import stage_summary

    rows = [{"stage": s.name, "item": s.name, "state": "fresh", "detail": ""} for s in STAGES]
    summary = stage_summary(list(reversed(rows)))
    assert [s["stage"] for s in summary] == [s.name for s in STAGES]
    assert [s["label"] for s in summary] == [s.label for s in STAGES]


def test_command_spells_options_as_the_cli_reads_them():
    from core.stages import BY_NAME, command

    assert command("gradients", task=["a", "b"]) == ["gradients", "--task", "a", "--task", "b"]
    assert command("evaluate", zero_shot=True) == ["evaluate", "--zero-shot"]
    assert command("mix", group=None, suggest=False) == ["mix"]
    assert command("run", ROOT / "x.yaml", workspace=3) == [
        "run",
        str(ROOT / "x.yaml"),
        "--workspace",
        "3",
    ]
    assert BY_NAME["training"].argv("group-1") == ["train", "--adapter", "group-1"]
    assert BY_NAME["training"].job("group-1") == "train:group-1"
    assert BY_NAME["affinity"].argv("ignored") == ["affinity"]  # one job: no item option


def _grouptune_verbs() -> set[str]:
    from typer.main import get_command

    from core.cli import app

    root = get_command(app)
    verbs = set(root.commands)
    for sub in root.commands.values():
        verbs |= set(getattr(sub, "commands", {}))
    return verbs


def _python_files():
    return [p for folder in ("core", "pages") for p in sorted((ROOT / folder).rglob("*.py"))]


def test_no_argv_is_built_by_hand_outside_the_stage_registry():
    """A `grouptune` command line is spelled by core.stages.command only: a list literal that
    starts with a verb anywhere else in core/ or pages/ is one more spelling to keep in step."""
    import ast

    verbs, found = _grouptune_verbs(), []
    for path in _python_files():
        if path.name == "stages.py" and path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            first = node.elts[0] if isinstance(node, ast.List) and node.elts else None
            if isinstance(first, ast.Constant) and first.value in verbs:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_every_command_built_names_a_real_grouptune_command():
    import ast

    verbs, called = _grouptune_verbs(), set()
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = getattr(getattr(node, "func", None), "id", None)
            if name in ("command", "grouptune_command") and isinstance(node.args[0], ast.Constant):
                called.add(node.args[0].value)
    assert len(called) >= 10  # the walk found the callers
    assert called <= verbs, called - verbs
