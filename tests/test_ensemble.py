"""core.ensemble.combine and core.report.report: manifest, weights on the simplex, shared inference, report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_cfg, make_tasks

from core.accounting import Accounting, stage_entry
from core.ensemble.combine import evaluate_ensemble, evaluate_trained, train_groups
from core.ensemble.manifest import (
    load_manifest,
    make_manifest,
    own_weights,
    save_manifest,
    validate_manifest,
)
from core.ensemble.weights import fit_weights, mixed_logits
from core.errors import GroupTuneError, StaleError
from core.report.report import build_report
from core.train.trainer import train_adapter
from core.workspace import Workspace

GROUPS = [["alpha"], ["beta"]]
BASE = {"name": "tiny-llama", "quantization": "none"}


# --- manifest and weights (no model) --------------------------------------------------------


def _fake_adapters(ws, names=("group-0", "group-1")) -> None:
    for name in names:
        ws.adapter_dir(name).mkdir(parents=True, exist_ok=True)
        ws.write({"name": name}, "adapters", name, "grouptune.json")


def test_own_weights_and_manifest_round_trip(tmp_path):
    ws = Workspace(tmp_path).ensure()
    _fake_adapters(ws)
    manifest = make_manifest(BASE, "none", [["a", "b"], ["c"]])
    assert manifest["weights"] == own_weights([["a", "b"], ["c"]])
    assert manifest["weights"]["c"] == {"group-1": 1.0}
    assert manifest["task_to_group"] == {"a": 0, "b": 0, "c": 1}
    assert manifest["adapters"] == {"group-0": "adapters/group-0", "group-1": "adapters/group-1"}
    save_manifest(ws, manifest)
    assert load_manifest(ws) == manifest
    fitted = {
        **manifest,
        "weights": {**manifest["weights"], "c": {"group-0": 0.25, "group-1": 0.75}},
    }
    save_manifest(ws, {**fitted, "weights_kind": "fit"})
    assert load_manifest(ws)["weights"]["c"] == {"group-0": 0.25, "group-1": 0.75}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m["weights"].update(c={"group-1": 0.9}), "sum to 0.9"),
        (lambda m: m["weights"].update(c={"group-0": 1.5, "group-1": -0.5}), "negative"),
        (lambda m: m["weights"].update(c={"group-7": 1.0}), "unknown adapter"),
        (lambda m: m["weights"].pop("a"), "no ensemble weights"),
        (lambda m: m["groups"][1].append("a"), "each task once"),
        (lambda m: m.update(weights_kind="learned"), "weights_kind"),
        (lambda m: m.pop("adapters"), "missing key"),
    ],
)
def test_manifest_validation_errors(mutate, message):
    manifest = make_manifest(BASE, "none", [["a", "b"], ["c"]])
    mutate(manifest)
    with pytest.raises(GroupTuneError, match=message):
        validate_manifest(manifest)


def test_manifest_needs_finished_adapters(tmp_path):
    ws = Workspace(tmp_path).ensure()
    _fake_adapters(ws, ["group-0"])
    ws.write(make_manifest(BASE, "none", [["a"], ["c"]]), "ensemble.json")
    with pytest.raises(GroupTuneError, match="'group-1' is missing or unfinished"):
        load_manifest(ws)
    with pytest.raises(GroupTuneError, match="train the group adapters first"):
        load_manifest(Workspace(tmp_path / "empty"))


def _synthetic(seed: int, n: int = 60, c: int = 3):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, c, n)
    signal = np.eye(c)[gold] * 3.0
    half = np.arange(n) < n // 2  # each adapter knows half of the rows
    logits = {
        "group-0": np.where(half[:, None], signal, 0) + rng.normal(0, 1, (n, c)),
        "group-1": np.where(~half[:, None], signal, 0) + rng.normal(0, 1, (n, c)),
        "group-2": rng.normal(0, 1, (n, c)),  # noise
    }
    return logits, gold


def _nll(logits: np.ndarray, gold: np.ndarray) -> float:
    z = logits - logits.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(gold)), gold]))


def test_fit_weights_lie_on_the_simplex_and_never_raise_val_nll():
    for seed in range(15):
        logits, gold = _synthetic(seed)
        start = {"group-0": 1.0}
        weights, info = fit_weights(logits, gold, start)
        values = np.array(list(weights.values()))
        assert np.all(values >= 0) and values.sum() == pytest.approx(1.0, abs=1e-9)
        assert info["val_nll_fit"] <= info["val_nll_own"] + 1e-12
        assert info["val_nll_own"] == pytest.approx(_nll(logits["group-0"], gold))
        assert info["val_nll_fit"] == pytest.approx(_nll(mixed_logits(logits, weights), gold))
    # here mixing the two half-informed adapters clearly helps, and the noise one is dropped
    assert info["val_nll_fit"] < info["val_nll_own"] - 0.05
    assert weights.get("group-1", 0) > 0.2 and "group-2" not in weights


def test_fit_keeps_own_when_it_is_already_best():
    logits, gold = _synthetic(0)
    logits = {"group-0": np.eye(3)[gold] * 5.0, "group-2": logits["group-2"]}
    weights, info = fit_weights(logits, gold, {"group-0": 1.0})
    assert weights == {"group-0": pytest.approx(1.0)}
    assert info["val_nll_fit"] <= info["val_nll_own"]


def test_mixed_logits_with_own_weights_is_the_adapter_itself():
    logits, _ = _synthetic(1)
    np.testing.assert_array_equal(mixed_logits(logits, {"group-1": 1.0}), logits["group-1"])


# --- trained adapters (tiny model) -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two group adapters and the baseline on tiny Llama, a few steps each."""
    root = tmp_path_factory.mktemp("ensemble")
    make_tasks(root)
    cfg = make_cfg(
        root,
        "tiny-llama",
        training={"epochs": 1, "max_steps_per_epoch": 3},
        ensemble={"weights": "own", "boosting": 0},
    )
    ws = Workspace(root / "ws").ensure()
    manifest = train_groups(cfg, ws, GROUPS, progress=False)
    train_adapter(cfg, ws, "baseline", ["alpha", "beta"], progress=False)
    return root, cfg, ws, manifest


def test_ensemble_with_own_weights_is_each_group_adapter_alone(trained):
    from peft import PeftModel

    from core.data.sources import select_tasks
    from core.models.loading import load_model
    from core.train.evaluation import evaluate_model

    _, cfg, ws, manifest = trained
    assert manifest["weights_kind"] == "own" and manifest["groups"] == GROUPS
    result = evaluate_ensemble(cfg, ws)
    doc = ws.read("eval", "ensemble.json")
    assert (doc["model"], doc["split"], doc["metrics"]) == ("ensemble", "test", result)
    assert set(result) == {"alpha", "beta", "mean"}
    for i, group in enumerate(GROUPS):
        base, tok = load_model(cfg.model)
        alone = PeftModel.from_pretrained(base, str(ws.adapter_dir(f"group-{i}")))
        single = evaluate_model(alone, tok, select_tasks(cfg, group), cfg)
        for task in group:
            assert result[task]["accuracy"] == single[task]["accuracy"]
            assert result[task]["nll"] == pytest.approx(single[task]["nll"], abs=1e-6)
    cost = Accounting(ws).stage("ensemble_inference")
    assert cost["adapters_per_example"] == 1 and cost["examples"] == 12
    assert cost["flops_per_example"] > 0


def test_fitted_weights_are_saved_and_not_worse_on_val(trained):
    _, cfg, ws, _ = trained
    fit_cfg = cfg.model_copy(
        update={"ensemble": cfg.ensemble.model_copy(update={"weights": "fit"})}
    )
    result = evaluate_ensemble(fit_cfg, ws)
    manifest = load_manifest(ws)
    assert manifest["weights_kind"] == "fit"
    for task, info in manifest["fit"].items():
        assert info["val_nll_fit"] <= info["val_nll_own"] + 1e-12
        assert sum(manifest["weights"][task].values()) == pytest.approx(1.0)
    doc = ws.read("eval", "ensemble.json")
    assert doc["weights_kind"] == "fit" and set(doc["by_weights"]) == {"own", "fit"}
    assert doc["metrics"] == result == doc["by_weights"]["fit"]
    cached = sorted(p.name for p in ws.path("eval", "cache").rglob("*-val-*.npy"))
    assert len(cached) == 4  # 2 adapters x 2 tasks of val logits
    evaluate_ensemble(fit_cfg, ws)
    assert sorted(p.name for p in ws.path("eval", "cache").rglob("*-val-*.npy")) == cached
    evaluate_ensemble(cfg, ws)  # back to own weights
    assert load_manifest(ws)["weights_kind"] == "own" and "fit" not in load_manifest(ws)


def test_evaluate_trained_and_report(trained):
    from core.train.evaluation import evaluate_zero_shot

    _, cfg, ws, _ = trained
    report = build_report(ws)
    assert report["accuracy"]["zero_shot"] is None
    assert any("zero_shot" in m for m in report["missing"])
    out = evaluate_trained(cfg, ws)
    evaluate_zero_shot(cfg, ws)
    assert set(out) == {"baseline", "ensemble"}
    assert ws.read("eval", "baseline.json")["metrics"] == out["baseline"]
    report = build_report(ws)
    assert report == ws.read("report.json")
    assert report["tasks"] == ["alpha", "beta"] and report["groups"] == GROUPS
    for metric in ("accuracy", "f1", "ece"):
        for model in ("zero_shot", "baseline", "ensemble"):
            assert set(report[metric][model]) == {"alpha", "beta", "mean"}
    assert report["flops"]["group_training"] == sum(report["flops_per_group"].values())
    assert report["flops_ratio"]["inference"] == pytest.approx(1.0, rel=0.05)
    assert report["flops_ratio"]["training_full"] is None  # no Step 1-4 cost yet
    assert report["flops_ratio"]["training_paper"] is None
    assert any("grouptune gradients" in m for m in report["missing"])
    acct = Accounting(ws)
    for task, (train, val) in {"alpha": (600, 200), "beta": (300, 100)}.items():
        entry = stage_entry(train + val, 1.0, 1, 100, "test", train_flops=train, val_flops=val)
        acct.record("gradients", entry, part=task)
    acct.record("estimation", stage_entry(10**3, 0.1, 1, 0, "test"))
    acct.record("boosting", stage_entry(5 * 10**4, 0.1, 1, 0, "test"), part="boost-0")
    acct.record("prefix_cache", stage_entry(7, 0.1, 1, 0, "test"), part="alpha.train.abc")
    acct.record("prefix_cache", stage_entry(10**9, 0.1, 1, 0, "test"), part="alpha.test.abc")
    report = build_report(ws)
    flops, base = report["flops"], report["flops"]["baseline_training"]
    weights = flops["ensemble_weights"]  # the val passes of the fitted-weights test above, or 0
    paper = (900 + flops["group_training"] + 5 * 10**4) / base
    full = (1200 + 7 + 10**3 + flops["group_training"] + weights + 5 * 10**4) / base
    assert report["flops_ratio"]["training_paper"] == pytest.approx(paper)
    assert report["flops_ratio"]["training_full"] == pytest.approx(
        full
    )  # test rows' cache left out
    assert report["missing"] == []


def test_damaged_or_foreign_adapters_are_refused(trained, tmp_path):
    _, cfg, ws, _ = trained
    copy = Workspace(tmp_path / "copy")
    shutil.copytree(ws.root, copy.root)
    weights = copy.adapter_dir("group-1") / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"garbage")
    with pytest.raises(GroupTuneError, match=r"group-1/adapter_model\.safetensors"):
        evaluate_ensemble(cfg, copy)
    weights.write_bytes(good)
    record_path = copy.adapter_dir("group-0") / "grouptune.json"
    record = json.loads(record_path.read_text())
    record["base_model"] = {**record["base_model"], "name": "another-model"}
    record_path.write_text(json.dumps(record))
    with pytest.raises(StaleError, match="another base model"):
        evaluate_ensemble(cfg, copy)
    with pytest.raises(GroupTuneError, match="nothing trained"):
        evaluate_trained(cfg, Workspace(tmp_path / "empty").ensure())
