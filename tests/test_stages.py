"""core.stages: the one table of the pipeline's stages, and the modules that read it."""

from __future__ import annotations

import importlib

import pytest

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
