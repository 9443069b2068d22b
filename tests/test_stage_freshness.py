"""Every stage: the freshness the dashboard shows (core.views.stages) and the engine's own
decision to skip or redo the work come from one rule. Each test makes a stage's output stale
on a copy of a real tiny workspace, checks the view says so, runs the engine step, and checks
that the engine did the work (and skips it once it is fresh again)."""

from __future__ import annotations

import pytest
import yaml
from dashboard import cli, copy_workspace

from core.accounting import Accounting
from core.artifacts import CHOSEN
from core.data.sources import load_tasks
from core.errors import StaleError
from core.views.stages import experiment_status
from core.workspace import Workspace


def _state(ws: Workspace, stage: str, item: str) -> dict:
    cfg = ws.load_config()
    rows = experiment_status(ws, cfg, load_tasks(cfg))
    return next(r for r in rows if (r["stage"], r["item"]) == (stage, item))


def _edit(ws: Workspace, section: str, values: dict) -> None:
    path = ws.root / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data[section].update(values)
    path.write_text(yaml.safe_dump(data))


def _mtime(path) -> int:
    return path.stat().st_mtime_ns


def _skips_then_redoes(ws, argv, doc, stage, item, edit, detail=None, after=None) -> None:
    """The engine skips the fresh output (`doc` untouched) and the view says fresh; after
    `edit` to the config the view says not fresh (`detail` when given) and the engine redoes
    it (`doc` rewritten); then the view says fresh again (for `after`, default `item`)."""
    before = _mtime(doc)
    cli(*argv, "--workspace", ws.root)
    assert _mtime(doc) == before and _state(ws, stage, item)["state"] == "fresh"
    _edit(ws, *edit)
    row = _state(ws, stage, after or item)
    assert row["state"] != "fresh" and row["detail"] == (detail or row["detail"])
    cli(*argv, "--workspace", ws.root)
    assert _mtime(doc) > before and _state(ws, stage, after or item)["state"] == "fresh"


def test_gradients(real_ws):
    ws = Workspace(copy_workspace(real_ws, "fresh_gradients"))
    meta = ws.features_dir("topics") / "meta.json"
    argv, edit = ["gradients", "--task", "topics"], ("features", {"k": 16})
    _skips_then_redoes(ws, argv, meta, "gradients", "topics", edit, "projection.k: 32 -> 16")


def test_affinity(real_ws):
    ws = Workspace(copy_workspace(real_ws, "fresh_affinity"))
    doc, edit = ws.root / "affinity.json", ("estimator", {"subsets": 2})
    _skips_then_redoes(ws, ["affinity"], doc, "affinity", "affinity", edit)


def test_training(real_ws):
    from core.train.trainer import train_adapter

    ws = Workspace(copy_workspace(real_ws, "fresh_training"))
    record = ws.adapter_dir("group-0") / "grouptune.json"
    argv, edit = ["train", "--adapter", "group-0"], ("training", {"epochs": 2})
    detail = "trained 1 epochs, the config asks 2"  # same settings, one more epoch: trained on
    _skips_then_redoes(ws, argv, record, "training", "group-0", edit, detail)
    _edit(ws, "training", {"lr": 0.002})  # other settings: shown stale, and refused, not reused
    assert _state(ws, "training", "group-0")["detail"] == "the training settings changed"
    tasks = CHOSEN.read(ws)["groups"][0]
    with pytest.raises(StaleError, match="another training"):
        train_adapter(ws.load_config(), ws, "group-0", tasks, progress=False)


def test_boosting(real_ws):
    ws = Workspace(copy_workspace(real_ws, "fresh_boosting"))
    doc, edit = ws.root / "ensemble.json", ("ensemble", {"boosting": 2})
    _skips_then_redoes(ws, ["boost"], doc, "boosting", "boost-0", edit, after="boost-1")


def test_evaluation(real_ws):
    ws = Workspace(copy_workspace(real_ws, "fresh_evaluation"))
    doc, edit = ws.root / "eval" / "ensemble.json", ("ensemble", {"weights": "own"})
    baseline = ws.root / "eval" / "baseline.json"
    before = _mtime(baseline)
    detail = "the ensemble settings changed"
    _skips_then_redoes(ws, ["evaluate"], doc, "evaluation", "ensemble", edit, detail)
    assert _mtime(baseline) == before  # still current: not scored again


def test_zero_shot(real_ws):
    ws = Workspace(copy_workspace(real_ws, "fresh_zero_shot"))
    doc, edit = ws.root / "eval" / "zero_shot.json", ("data", {"max_tokens": 40})
    detail = "the token budget changed"
    _skips_then_redoes(
        ws, ["evaluate", "--zero-shot"], doc, "evaluation", "zero_shot", edit, detail
    )


def test_grouping(real_ws):
    ws = Workspace(copy_workspace(real_ws, "fresh_grouping"))
    doc, edit = CHOSEN.path(ws), ("grouping", {"seed": 1})
    detail = "the grouping settings changed"
    _skips_then_redoes(ws, ["group"], doc, "grouping", "chosen", edit, detail)


def test_a_grouping_edited_by_hand_is_kept_while_current(real_ws):
    ws = Workspace(copy_workspace(real_ws, "fresh_edited"))
    task = CHOSEN.read(ws)["groups"][0][0]
    cli("group", "--move", f"{task}:1", "--workspace", ws.root)
    edited = CHOSEN.read(ws)
    cli("group", "--workspace", ws.root)  # what `grouptune run` does: the edit stays
    assert CHOSEN.read(ws) == edited and edited["source"] == "edited"
    assert _state(ws, "grouping", "chosen")["state"] == "fresh"
    cli("group", "--force", "--workspace", ws.root)
    assert CHOSEN.read(ws)["source"] == "sweep"


def test_a_grouping_chosen_before_inputs_were_recorded_is_judged_by_file_times(real_ws):
    import os

    ws = Workspace(copy_workspace(real_ws, "fresh_legacy_grouping"))
    task = CHOSEN.read(ws)["groups"][0][0]
    cli("group", "--move", f"{task}:1", "--workspace", ws.root)
    legacy = {k: v for k, v in CHOSEN.read(ws).items() if k != "inputs"}
    CHOSEN.write(ws, legacy)  # as an older GroupTune wrote it
    cli("group", "--workspace", ws.root)
    assert CHOSEN.read(ws) == legacy  # the hand edit is kept
    aff = ws.root / "affinity.json"
    os.utime(aff, ns=(_mtime(CHOSEN.path(ws)) + 10**9,) * 2)  # the affinity was made again since
    assert _state(ws, "grouping", "chosen")["detail"] == "the affinity matrix changed since"
    cli("group", "--workspace", ws.root)
    assert CHOSEN.read(ws)["source"] == "sweep" and "inputs" in CHOSEN.read(ws)


def test_inputs_that_are_not_inputs_read_as_stale_not_as_a_crash(real_ws):
    ws = Workspace(copy_workspace(real_ws, "fresh_bad_inputs"))
    CHOSEN.write(ws, CHOSEN.read(ws) | {"inputs": ["edited", "by", "hand"]})
    report = ws.read("report.json")
    ws.write(report | {"inputs": "nonsense"}, "report.json")
    assert _state(ws, "grouping", "chosen") == {
        "stage": "grouping",
        "item": "chosen",
        "state": "stale",
        "detail": "no inputs",
    }
    assert _state(ws, "report", "report")["detail"] == "made before reports were fingerprinted"
    cli("group", "--workspace", ws.root)
    assert _state(ws, "grouping", "chosen")["state"] == "fresh"


def test_report(real_ws):
    ws = Workspace(copy_workspace(real_ws, "fresh_report"))
    doc = ws.root / "report.json"
    cli("report", "--workspace", ws.root)
    before = _mtime(doc)
    cli("report", "--workspace", ws.root)
    assert _mtime(doc) == before and _state(ws, "report", "report")["state"] == "fresh"
    # features recomputed under the same key (a fresh clone's `make demo`) record their cost
    # again: nothing the report compares changed
    Accounting(ws).record("estimation", {"wall_seconds": 1.0, "flops": 1})
    assert _state(ws, "report", "report")["state"] == "fresh"
    _edit(ws, "data", {"max_tokens": 40})  # the same scores again would leave it current
    cli("evaluate", "--zero-shot", "--workspace", ws.root)
    row = _state(ws, "report", "report")
    assert (row["state"], row["detail"]) == ("stale", "evaluated again since")
    cli("report", "--workspace", ws.root)
    assert _mtime(doc) > before and _state(ws, "report", "report")["state"] == "fresh"
