"""Mixing weights scored and suggested by the estimate of the expected fine-tune."""

from __future__ import annotations

import numpy as np
import pytest
from test_replay import linear_task

from core.config import TrainingConfig
from core.errors import GroupTuneError
from core.estimate.estimator import score
from core.estimate.mixing import predict_mix, suggest_mix
from core.estimate.replay import expected_replay


def named_tasks(seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = [linear_task(rng, 10, n, 30, scale=1.0) for n in (24, 16, 20)]
    for name, tf in zip("abc", feats, strict=True):
        tf.meta["task"] = name
    return feats


TCFG = TrainingConfig(epochs=2, lr=0.05, batch_size=4, patience=None)


def test_predictions_are_the_expected_replay_with_the_mix():
    feats = named_tasks()
    uniform = predict_mix(feats, TCFG, 3, None)
    fit = expected_replay(feats, TCFG, 3)
    assert uniform == {n: score(tf, fit) for n, tf in zip("abc", feats, strict=True)}
    assert predict_mix(feats, TCFG, 3, {"a": 2.0, "b": 2.0, "c": 2.0}) == uniform  # equal: same
    mixed = predict_mix(feats, TCFG, 3, {"c": 4.0})
    fit = expected_replay(feats, TCFG.model_copy(update={"mix": {"c": 4.0}}), 3)
    assert mixed["c"] == score(feats[2], fit) and mixed["c"] != uniform["c"]


@pytest.mark.parametrize("objective", ["loss", "accuracy"])
def test_the_suggestion_is_never_worse_than_uniform_and_recomputable(objective):
    feats = named_tasks(1)
    out = suggest_mix(feats, TCFG, 2, objective=objective, max_evaluations=25)
    assert set(out["weights"]) == {"a", "b", "c"}
    assert sum(out["weights"].values()) == pytest.approx(3.0, abs=1e-3)  # n·softmax
    again = predict_mix(feats, TCFG, 2, out["weights"])
    assert again == out["predicted"]
    mean = {k: np.mean([p[objective] for p in out[k].values()]) for k in ("predicted", "uniform")}
    better = (
        mean["predicted"] <= mean["uniform"]
        if objective == "loss"
        else (mean["predicted"] >= mean["uniform"])
    )
    assert better
    if objective == "loss":  # here the search finds weights that beat uniform outright
        assert set(out["weights"].values()) != {1.0} and out["effect"]["mean"]["loss"] < 0
    assert out["effect"]["mean"][objective] == pytest.approx(mean["predicted"] - mean["uniform"])
    assert out["evaluations"] > 1


def test_protect_keeps_every_task_at_or_above_its_uniform_prediction():
    feats = named_tasks(2)
    free = suggest_mix(feats, TCFG, 2, max_evaluations=40)
    safe = suggest_mix(feats, TCFG, 2, protect=True, max_evaluations=40)
    for name in "abc":
        assert safe["predicted"][name]["loss"] <= safe["uniform"][name]["loss"] + 1e-12
    assert (
        np.mean([p["loss"] for p in safe["predicted"].values()])
        >= np.mean([p["loss"] for p in free["predicted"].values()]) - 1e-12
    )  # protection can only cost on the objective


def test_bad_requests_are_refused():
    feats = named_tasks()
    with pytest.raises(GroupTuneError, match="objective"):
        suggest_mix(feats, TCFG, 2, objective="f1")
    with pytest.raises(GroupTuneError, match="at least 2 tasks"):
        suggest_mix(feats[:1], TCFG, 2)


def test_the_mix_command_on_a_real_workspace(real_ws):
    """`grouptune mix`: the given weights' prediction, and a suggestion, for a group of the
    chosen grouping and for the single adapter; written for the dashboard."""
    from dashboard import cli, copy_workspace

    from core.gradients.store import load_features
    from core.workspace import Workspace

    ws = Workspace(copy_workspace(real_ws, "mix"))
    cfg = ws.load_config()
    groups = ws.read("groupings", "chosen.json")["groups"]
    big = max(range(len(groups)), key=lambda i: len(groups[i]))
    tasks = [t for t in cfg.task_names if t in groups[big]]
    assert len(tasks) >= 2
    given = cli("mix", "--workspace", ws.root, "--group", big, "--weight", f"{tasks[0]}=3")
    feats = [load_features(ws, t) for t in tasks]
    expected = predict_mix(feats, cfg.training, cfg.estimator.orders, {tasks[0]: 3.0})
    for t in tasks:
        assert given["predicted"][t] == pytest.approx(expected[t], rel=1e-12)
    assert given["weights"] == {t: (3.0 if t == tasks[0] else 1.0) for t in tasks}
    assert ws.read("groupings", f"mix-{big}.json") == given
    every = cli("mix", "--workspace", ws.root, "--suggest", "--protect")
    assert every["tasks"] == cfg.task_names and every["group"] == "all"
    for t in every["tasks"]:
        assert every["predicted"][t]["loss"] <= every["uniform"][t]["loss"] + 1e-12
    from core.cli import main

    assert main(["mix", "--workspace", str(ws.root), "--group", "9"]) == 2  # no such group
    assert main(["mix", "--workspace", str(ws.root), "--weight", "nope=2"]) == 2


def test_the_mixing_bench_smoke_run_is_its_fine_tunes(tmp_path):
    """bench/mixing.py --smoke: the measured change is the weighted minus the uniform adapter's
    kept-epoch val metrics, per seed; the weighted adapters were trained with the weights."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    out, ws = tmp_path / "mixing.json", tmp_path / "ws"
    proc = subprocess.run(
        [sys.executable, "bench/mixing.py", "--smoke", "--out", str(out), "--workspace", str(ws)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())["presets"]["quick"]

    def record(seed, variant):
        path = ws / "quick" / "runs" / f"s{seed}-{variant}" / "adapters" / "baseline"
        return json.loads((path / "grouptune.json").read_text())

    for seed, change in res["measured_change_per_seed"].items():
        uni, mix = record(seed, "uniform"), record(seed, "weighted")
        assert mix["config"]["training"]["mix"] == res["weights"]
        assert uni["config"]["training"]["mix"] == {}
        for task, delta in change.items():
            real = mix["val_metrics"][task]["nll"] - uni["val_metrics"][task]["nll"]
            assert delta["loss"] == pytest.approx(real, rel=1e-12)
    for t in res["tasks"]:
        per_seed = [c[t]["loss"] for c in res["measured_change_per_seed"].values()]
        assert res["measured_change"][t]["loss"] == pytest.approx(np.mean(per_seed))
    assert sum(res["weights"].values()) == pytest.approx(len(res["tasks"]), abs=1e-3)
    assert res["gain_ci"][0] <= res["mean_gain"] <= res["gain_ci"][1]
    for variant, by_seed in res["test_accuracy_per_seed"].items():  # the noise floor's numbers
        for seed, acc in by_seed.items():
            doc = ws / "quick" / "runs" / f"s{seed}-{variant}" / "eval" / "baseline.json"
            correct = json.loads(doc.read_text())["correct"]
            assert acc == pytest.approx(np.mean([np.mean(r) for r in correct.values()]))


def test_the_groups_page_sliders_predict_and_the_suggestion_fills_them(real_ws, monkeypatch):
    """Groups page: a slider moves the predicted effect (the same numbers as the engine's),
    Suggest weights queues `grouptune mix --suggest`, and its result fills the sliders."""
    from dashboard import cli, copy_workspace, open_page

    from core.gradients.store import load_features
    from core.views.jobs import read_jobs
    from core.workspace import Workspace

    monkeypatch.setenv("GROUPTUNE_MAX_JOBS", "0")  # queued, not run: the test runs it below
    root = copy_workspace(real_ws, "mix_page")
    ws = Workspace(root)
    cfg = ws.load_config()
    chosen = ws.read("groupings", "chosen.json")
    label = next(f"group {i}" for i, g in enumerate(chosen["groups"]) if len(g) > 1)
    tasks = [t for t in cfg.task_names if t in chosen["groups"][int(label.split()[-1])]]
    at = open_page(root, "groups", monkeypatch)
    at.selectbox(key="grp_mix_target").select(label).run()
    feats = [load_features(ws, t) for t in tasks]

    def shown():
        return next(d.value for d in at.dataframe if "Δ val loss" in d.value.columns)

    first = shown()
    assert first["Δ val loss"].abs().max() == 0 and list(first["task"]) == tasks  # uniform
    at.slider(key=f"grp_mix:{label}:{tasks[0]}").set_value(3.0).run()
    moved = shown()
    want = predict_mix(feats, cfg.training, cfg.estimator.orders, {tasks[0]: 3.0})
    for row in moved.itertuples():
        assert row._3 == pytest.approx(want[row.task]["loss"], rel=1e-12)
    assert moved["Δ val loss"].abs().max() > 0
    at.button(key="grp_mix_suggest").click().run()
    job = read_jobs(ws)[-1]
    assert job["argv"] == [
        "mix",
        "--group",
        label.split()[-1],
        "--suggest",
        "--workspace",
        str(root),
    ]
    suggestion = cli(*job["argv"])  # what the job would write
    at.run()
    at.button(key="grp_mix_use").click().run()
    for t in tasks:
        assert at.slider(key=f"grp_mix:{label}:{t}").value == round(suggestion["weights"][t], 1)
    at.button(key="grp_mix_train").click().run()
    train = read_jobs(ws)[-1]["argv"]
    given = {train[i + 1].split("=")[0]: float(train[i + 1].split("=")[1])
             for i, a in enumerate(train) if a == "--weight"}  # fmt: skip
    assert train[-3:] == ["--train", "--workspace", str(root)]
    for t in tasks:
        assert given.get(t, 1.0) == round(suggestion["weights"][t], 1)


def test_training_with_weights_is_compared_with_uniform_on_test(real_ws, monkeypatch):
    """`grouptune mix --train`: the weighted adapter trains beside the uniform one (which the
    ensemble keeps), both are scored on the test rows, and the Compare page shows them."""
    import json

    from dashboard import cli, copy_workspace, open_page

    from core.stats import paired_gain, paired_sample
    from core.workspace import Workspace

    root = copy_workspace(real_ws, "mix_train")
    ws = Workspace(root)
    cfg = ws.load_config()
    out = cli("mix", "--workspace", root, "--weight", f"{cfg.task_names[0]}=2.5", "--train")
    doc = ws.read("eval", "mix-all.json")
    record = json.loads((ws.adapter_dir("baseline-mix") / "grouptune.json").read_text())
    assert record["config"]["training"]["mix"] == doc["weights"] == out["weights"]
    assert doc["weights"][cfg.task_names[0]] == 2.5
    base = ws.read("eval", "baseline.json")  # the uniform adapter, as evaluate scored it
    assert doc["correct"]["uniform"] == base["correct"]
    assert doc["uniform"]["mean"]["accuracy"] == base["metrics"]["mean"]["accuracy"]
    gain = paired_gain([paired_sample(doc["correct"]["weighted"], doc["correct"]["uniform"])])
    assert doc["gain"] == gain and out["trained"]["gain"] == gain
    manifest = ws.read("ensemble.json")
    assert "baseline-mix" not in json.dumps(manifest)  # the ensemble keeps its adapters
    at = open_page(root, "compare", monkeypatch)
    table = next(d.value for d in at.dataframe if "weighted accuracy" in d.value.columns)
    mean = table.set_index("task").loc["mean"]
    assert mean["weighted accuracy"] == doc["weighted"]["mean"]["accuracy"]
    assert mean["uniform accuracy"] == doc["uniform"]["mean"]["accuracy"]
