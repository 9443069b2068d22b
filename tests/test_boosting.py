"""core.ensemble.boosting: a round on the residual of the ensemble, fitted from features or trained.

Tiny Llama on two small real task folders (test_training's), unprojected features, one group
adapter per task trained for a few steps, so the ensemble leaves a residual to boost on.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_cfg, make_tasks

from core.accounting import Accounting
from core.ensemble import boosting
from core.ensemble.combine import evaluate_ensemble, train_groups
from core.ensemble.manifest import load_manifest
from core.gradients.extract import extract_features
from core.gradients.store import load_features
from core.workspace import Workspace

GROUPS = [["alpha"], ["beta"]]


def _cfg(root, method):
    return make_cfg(
        root,
        "tiny-llama",
        adapter={"dropout": 0.0},
        features={"projection": "identity"},
        training={"epochs": 2, "lr": 2e-3, "batch_size": 4},
        ensemble={"weights": "fit", "boosting": 1, "boosting_method": method},
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("boosting")
    make_tasks(path)
    return path


_MADE: dict = {}


def grouped(root, method):
    """(cfg, ws) with features and one trained group adapter per task; made once per method."""
    if method not in _MADE:
        cfg = _cfg(root, method)
        ws = Workspace(root / method).ensure()
        extract_features(cfg, ws, ["alpha", "beta"])
        train_groups(cfg, ws, GROUPS, progress=False)
        _MADE[method] = cfg, ws
    return _MADE[method]


@pytest.mark.parametrize("method", ["features", "train"])
def test_a_boosting_round_lowers_the_training_residual(root, method):
    cfg, ws = grouped(root, method)
    entry = boosting.boost_round(cfg, ws, 0)

    # the group the ensemble gets most wrong on its train rows is the one boosted
    assert entry["group"] == int(np.argmax(entry["train_errors"]))
    assert entry["tasks"] == GROUPS[entry["group"]] and entry["method"] == method
    assert entry["train_error_before"] == pytest.approx(max(entry["train_errors"]))
    # the fitted adapter, at a full step, lowers the residual it was fitted to
    assert entry["train_error_full_step"] < entry["train_error_before"] - 1e-3
    # the step is fitted on val and never makes it worse
    assert 0.0 <= entry["step"] <= 1.0
    assert entry["val_nll_after"] <= entry["val_nll_before"]
    assert entry["flops"] > 0
    assert Accounting(ws).stage("boosting")["parts"]["boost-0"]["flops"] == entry["flops"]

    manifest = load_manifest(ws)
    assert manifest["weights_kind"] == "fit" and manifest["boosting"] == [entry]
    assert boosting.boost_round(cfg, ws, 0) == entry  # made once, then read back

    evaluate_ensemble(cfg, ws)
    doc = ws.read("eval", "ensemble.json")
    assert doc["boosting"] == [entry]
    used = entry["step"] > 0
    assert doc["forwards_per_example"]["ensemble"] >= doc["forwards_per_example"]["fit"]
    if used:  # each boosted task runs its round's adapter and the base model once more
        n_fit = np.mean([len(manifest["weights"][t]) for t in ("alpha", "beta")])
        assert doc["forwards_per_example"]["ensemble"] == pytest.approx(n_fit + 1.0)


def test_offset_features_put_the_ensemble_in_place_of_the_base(root):
    """The store's train rows are the rows the ensemble scores (same order): the base model's
    cached logits give back the stored log-odds h, and offsetting by them changes nothing."""
    from core.data.prompts import encode_split
    from core.data.sources import select_tasks
    from core.ensemble.boosting import offset_features
    from core.ensemble.logits import cached_logits, load_adapters

    cfg, ws = grouped(root, "features")
    model, tok = load_adapters(cfg, ws, {"group-0": "adapters/group-0"})
    task = select_tasks(cfg, ["alpha"])[0]
    tf = load_features(ws, "alpha")
    logits = {
        s: cached_logits(ws, model, tok, encode_split(tok, task, s, cfg.data.max_tokens), None, cfg)
        for s in ("train", "val")
    }
    same = offset_features(tf, logits["train"], logits["val"])
    np.testing.assert_allclose(same.train_h, tf.train_h, atol=2e-4)
    np.testing.assert_allclose(same.val_z, tf.val_z, atol=2e-4)


def test_the_dashboard_sees_missing_and_made_rounds_by_the_engines_rule(root, tmp_path):
    import shutil

    from core.views.stages import boosting_todo, experiment_status

    cfg, ws = grouped(root, "features")
    boosting.boost_round(cfg, ws, 0)
    rows = [r for r in experiment_status(ws, cfg, []) if r["stage"] == "boosting"]
    assert [(r["item"], r["state"]) for r in rows] == [("boost-0", "fresh")]
    assert not boosting_todo(ws, cfg)

    copy = Workspace(tmp_path / "copy")
    shutil.copytree(ws.root, copy.root)
    manifest = load_manifest(copy)
    copy.write({k: v for k, v in manifest.items() if k != "boosting"}, "ensemble.json")
    assert boosting.missing_rounds(cfg, load_manifest(copy)) == [0]
    assert boosting_todo(copy, cfg)
    two = cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"boosting": 2})})
    assert boosting.missing_rounds(two, manifest) == [1]  # round 0 is made, round 1 is not
    own = cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"weights": "own"})})
    assert boosting.missing_rounds(own, manifest) == [0]  # made on other weights: not counted
