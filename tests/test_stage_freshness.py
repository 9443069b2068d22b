"""Every stage: the freshness the dashboard shows (core.views.stages) and the engine's own
decision to skip or redo the work come from one rule. Each test makes a stage's output stale
on a copy of a real tiny workspace, checks the view says so, runs the engine step, and checks
that the engine did the work (and skips it once it is fresh again)."""

from __future__ import annotations

import pytest
import yaml
from dashboard import cli, copy_workspace

from core.artifacts import CHOSEN
from core.data.sources import load_tasks
from core.errors import StaleError
from core.views.stages import experiment_status
from core.workspace import Workspace


def _state(ws: Workspace, stage: str, item: str) -> dict:
    cfg = ws.load_config()
    rows = experiment_status(ws, cfg, load_tasks(cfg))
    return next(r for r in rows if (r["stage"], r["item"]) == (stage, item))


def _edit(ws: Workspace, section: str, **values) -> None:
    path = ws.root / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data[section].update(values)
    path.write_text(yaml.safe_dump(data))


def _mtime(path) -> int:
    return path.stat().st_mtime_ns


def test_gradients(real_ws):
    ws = Workspace(copy_workspace(real_ws, "fresh_gradients"))
    meta = ws.features_dir("topics") / "meta.json"
    done = cli("gradients", "--task", "topics", "--workspace", ws.root)
    assert (
        done["topics"]["rows_computed"] == 0
        and _state(ws, "gradients", "topics")["state"] == "fresh"
    )
    _edit(ws, "features", k=16)
    assert _state(ws, "gradients", "topics")["detail"] == "projection.k: 32 -> 16"
    before = _mtime(meta)
    done = cli("gradients", "--task", "topics", "--workspace", ws.root)
    assert done["topics"]["rows_computed"] > 0 and _mtime(meta) > before
    assert _state(ws, "gradients", "topics")["state"] == "fresh"


def test_affinity(real_ws):
    ws = Workspace(copy_workspace(real_ws, "fresh_affinity"))
    doc = ws.root / "affinity.json"
    before = _mtime(doc)
    cli("affinity", "--workspace", ws.root)
    assert _mtime(doc) == before and _state(ws, "affinity", "affinity")["state"] == "fresh"
    _edit(ws, "estimator", subsets=2)
    assert _state(ws, "affinity", "affinity")["state"] == "stale"
    cli("affinity", "--workspace", ws.root)
    assert _mtime(doc) > before and _state(ws, "affinity", "affinity")["state"] == "fresh"


def test_training(real_ws):
    from core.train.trainer import train_adapter

    ws = Workspace(copy_workspace(real_ws, "fresh_training"))
    record = ws.adapter_dir("group-0") / "grouptune.json"
    before = _mtime(record)
    cli("train", "--adapter", "group-0", "--workspace", ws.root)
    assert _mtime(record) == before and _state(ws, "training", "group-0")["state"] == "fresh"
    _edit(ws, "training", epochs=2)  # same settings, one more epoch: trained on
    assert _state(ws, "training", "group-0")["detail"] == "trained 1 epochs, the config asks 2"
    cli("train", "--adapter", "group-0", "--workspace", ws.root)
    assert _mtime(record) > before and _state(ws, "training", "group-0")["state"] == "fresh"
    _edit(ws, "training", lr=0.002)  # other settings: shown stale, and refused, not reused
    assert _state(ws, "training", "group-0")["detail"] == "the training settings changed"
    tasks = CHOSEN.read(ws)["groups"][0]
    with pytest.raises(StaleError, match="another training"):
        train_adapter(ws.load_config(), ws, "group-0", tasks, progress=False)


def test_boosting(real_ws):
    ws = Workspace(copy_workspace(real_ws, "fresh_boosting"))
    manifest = ws.root / "ensemble.json"
    before = _mtime(manifest)
    cli("boost", "--workspace", ws.root)
    assert _mtime(manifest) == before and _state(ws, "boosting", "boost-0")["state"] == "fresh"
    _edit(ws, "ensemble", boosting=2)
    assert _state(ws, "boosting", "boost-1")["state"] == "missing"
    cli("boost", "--workspace", ws.root)
    assert _mtime(manifest) > before and _state(ws, "boosting", "boost-1")["state"] == "fresh"
