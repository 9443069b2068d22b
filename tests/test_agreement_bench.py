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


def test_scores_are_recomputable_from_the_stored_rows(smoke):
    from core.validate.agreement import fair_agreement, seed_matched, seeds_wide

    _, res = smoke
    wide = seeds_wide(pd.DataFrame(res["real"]))
    part = res["split"]["all"]
    wide = wide[wide["task"].isin(part["tasks"]) & wide["subset"].isin(part["subsets"])]
    for name in ("replay-R1", "replay-R2", "argmin@0.1", "replay-R2-cs8"):
        pred = pd.DataFrame(res["predictions"][name])
        mine = fair_agreement(wide.merge(pred, on=["subset", "task"]), n_boot=10)
        got = res["scores"]["all"]["variants"][name]
        for key in ("order_agreement_vs_mean", "within_task_corr_loss_vs_mean", "pairs"):
            assert got[key] == pytest.approx(mine[key]), (name, key)
    ceiling = res["scores"]["all"]["ceiling"]
    assert ceiling["ceiling_order_agreement_loo"] == pytest.approx(
        mine["ceiling_order_agreement_loo"]
    )
    by_seed = {int(s): pd.DataFrame(v) for s, v in res["seed_predictions"]["replay-seed"].items()}
    matched = seed_matched(wide, by_seed, n_boot=10)
    got = res["scores"]["all"]["seed_specific"]["replay-seed"]["order_agreement_seed_matched"]
    assert got == pytest.approx(matched["order_agreement_seed_matched"])


def test_held_out_parts_share_no_task_with_the_selection(smoke):
    _, res = smoke
    sel, held = res["split"]["selection"], res["split"]["held_out"]
    strict = res["split"]["held_out_strict"]
    assert not set(sel["tasks"]) & set(held["tasks"]) and strict["tasks"] == held["tasks"]
    assert set(strict["subsets"]) < set(held["subsets"]) == set(sel["subsets"])
    assert res["chosen"]["variant"] in res["scores"]["selection"]["variants"]


def test_replay_predictions_are_the_product_estimator(smoke):
    from core.config import load_config
    from core.estimate.estimator import predict, score
    from core.estimate.replay import expected_replay, replay
    from core.gradients.store import load_features
    from core.workspace import Workspace

    ws, res = smoke
    ws = Workspace(ws)
    cfg = load_config(ws.config_path)
    tasks = res["subsets"][0]
    feats = [load_features(ws, t) for t in tasks]
    seed = res["seeds"][1]
    w = replay(feats, cfg.training.model_copy(update={"seed": seed})).w
    own = pd.DataFrame(res["seed_predictions"]["replay-seed"][str(seed)])
    expected = expected_replay(feats, cfg.training, 2)  # the product's estimate, R = 2
    avg = pd.DataFrame(res["predictions"]["replay-R2"])
    for task, tf in zip(tasks, feats, strict=True):
        key = (own["subset"] == "+".join(tasks)) & (own["task"] == task)
        assert own[key].iloc[0]["predicted_loss"] == pytest.approx(
            predict(tf, w)["loss"], rel=1e-12
        )
        key = (avg["subset"] == "+".join(tasks)) & (avg["task"] == task)
        assert avg[key].iloc[0]["predicted_loss"] == pytest.approx(
            score(tf, expected)["loss"], rel=1e-12
        )
