"""bench/agreement.py --smoke: its figures are core.validate.agreement's on its own stored rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agreement")
    cmd = [sys.executable, "bench/agreement.py", "--smoke", "--workspace", str(tmp / "ws")]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp / "out.json")], cwd=ROOT, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp / "ws", json.loads((tmp / "out.json").read_text())


def real_of(res, seed):
    real = pd.DataFrame(res["real"])
    return real[real["seed"] == seed][["subset", "task", "loss", "accuracy"]]


def test_real_rows_are_the_kept_epochs_of_the_fine_tunes(smoke):
    from bench.agreement import kept_epoch
    from core.validate.subsets import adapter_name
    from core.workspace import Workspace

    ws, res = smoke
    assert len(res["real"]) == len(res["subsets"]) * len(res["seeds"]) * 2  # pairs of tasks
    for row in res["real"]:
        name = f"{adapter_name(row['subset'].split('+'))}-s{row['seed']}"
        kept = kept_epoch(Workspace(ws), name)[row["task"]]
        assert (row["loss"], row["accuracy"]) == (kept["nll"], kept["accuracy"])


def test_ceiling_and_variants_are_recomputable(smoke):
    from core.validate.agreement import agreement

    _, res = smoke
    a, b = (real_of(res, s) for s in res["seeds"])
    both = a.merge(b, on=["subset", "task"], suffixes=("_x", "_real"))
    base = pd.DataFrame(res["predictions"]["replay"]["0"])[["subset", "task", "base_loss"]]
    both = both.rename(
        columns={
            "loss_x": "x_loss",
            "accuracy_x": "x_accuracy",
            "loss_real": "real_loss",
            "accuracy_real": "real_accuracy",
        }
    )
    ceiling = agreement(both.merge(base), pred="x")
    assert res["noise_ceiling"]["order_agreement"] == ceiling["order_agreement"]
    assert res["noise_ceiling"]["paper_rel_error"] == pytest.approx(ceiling["paper_rel_error"])
    for name in ("replay", "replay-cross", "argmin@0.1", "replay-cs8"):
        for seed in res["seeds"]:
            pred = pd.DataFrame(res["predictions"][name][str(seed)])
            real = real_of(res, seed).rename(
                columns={"loss": "real_loss", "accuracy": "real_accuracy"}
            )
            mine = agreement(pred.merge(real, on=["subset", "task"]))
            got = res["variants"][name]["per_seed"][str(seed)]
            assert got["paper_rel_error"] == pytest.approx(mine["paper_rel_error"])
            assert got["order_agreement"] == mine["order_agreement"]


def test_replay_predictions_are_the_product_estimator(smoke):
    from core.config import load_config
    from core.estimate.estimator import predict
    from core.estimate.replay import replay
    from core.gradients.store import load_features
    from core.workspace import Workspace

    ws, res = smoke
    ws = Workspace(ws)
    cfg = load_config(ws.config_path)
    tasks = res["subsets"][0]
    feats = [load_features(ws, t) for t in tasks]
    w = replay(feats, cfg.training.model_copy(update={"seed": res["seeds"][1]})).w
    pred = pd.DataFrame(res["predictions"]["replay"][str(res["seeds"][1])])
    for task, tf in zip(tasks, feats, strict=True):
        row = pred[(pred["subset"] == "+".join(tasks)) & (pred["task"] == task)].iloc[0]
        assert row["predicted_loss"] == pytest.approx(predict(tf, w)["loss"], rel=1e-12)
