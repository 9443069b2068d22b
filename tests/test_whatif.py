"""core.estimate.whatif: any partition answered, fits cached per group, bad partitions refused."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import parse_config
from core.errors import GroupTuneError
from core.estimate.estimator import fit_update, predict
from core.estimate.whatif import WhatIf, predict_partition
from core.gradients.store import TaskFeatures
from core.workspace import Workspace


def make_task(rng, k, n=60, m=30, C=2, name="t"):
    """Real arrays of the feature contract; gradients lean along a task-specific direction."""
    d = rng.normal(size=k)
    d /= np.linalg.norm(d)
    z = rng.normal(size=(m, C))
    gold = rng.integers(0, C, m)
    G = rng.normal(size=(m, C, k)) * 0.3
    G[np.arange(m), gold] += d
    return TaskFeatures(
        train_h=rng.normal(-0.5, 0.5, n),
        train_g=d + rng.normal(size=(n, k)) * 0.5,
        train_gold=np.zeros(n, int),
        val_z=z,
        val_lse=np.logaddexp.reduce(z, axis=1),
        val_h=z[np.arange(m), gold],
        val_G=G,
        val_Glse=None,
        val_gold=gold,
        target="choices",
        k=k,
        meta={"task": name},
    )


def tasks(n_tasks=6, k=12, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return {f"t{i}": make_task(rng, k, name=f"t{i}", **kw) for i in range(n_tasks)}


def test_any_partition_is_answered_and_matches_direct_fits():
    feats = tasks()
    wi = WhatIf(feats, reg=None, max_norm=0.5)
    groups = [["t0", "t3"], ["t1"], ["t5", "t2", "t4"]]
    out = wi.predict(groups)
    assert set(out) == set(feats)
    for i, group in enumerate(groups):
        fit = fit_update([feats[t] for t in group], None, 0.5)
        for t in group:
            direct = predict(feats[t], fit.w)
            assert out[t]["group"] == i
            assert out[t]["norm"] == pytest.approx(fit.norm, rel=1e-6)
            for key in ("loss", "accuracy", "base_loss", "base_accuracy"):
                assert out[t][key] == pytest.approx(direct[key], rel=1e-6, abs=1e-9)
    one = wi.predict([list(feats)])
    assert {row["group"] for row in one.values()} == {0}


def test_fits_are_cached_per_group():
    feats = tasks()
    wi = WhatIf(feats, max_norm=0.5)
    wi.predict([["t0", "t1", "t2"], ["t3", "t4", "t5"]])
    assert wi.n_fits_ == 2
    wi.predict([["t2", "t1", "t0"], ["t5", "t4", "t3"]])  # same groups, other order
    assert wi.n_fits_ == 2
    wi.predict([["t0", "t1"], ["t2", "t3", "t4", "t5"]])  # t2 moved: two new groups
    assert wi.n_fits_ == 4
    wi.predict([["t3", "t4", "t5"], ["t0", "t1"], ["t2"]])
    assert wi.n_fits_ == 5


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([], "at least one group"),
        ([["t0", "t1", "t2"], [], ["t3", "t4", "t5"]], "group 1 is empty"),
        ([["t0", "t1", "t2"], ["t3", "t4"]], r"in no group: \['t5'\]"),
        ([["t0", "t1", "t2"], ["t2", "t3", "t4", "t5"]], "'t2' is in group 0 and group 1"),
        ([["t0", "t1", "t2", "x"], ["t3", "t4", "t5"]], "unknown task 'x'"),
    ],
)
def test_bad_partitions_are_refused(groups, message):
    with pytest.raises(GroupTuneError, match=message):
        WhatIf(tasks(), max_norm=0.5).predict(groups)


def test_from_workspace_uses_the_configured_replay(tmp_path):
    """The default estimator: each group's update is the recipe replayed on its union, tasks in
    the config's order (the order the trainer batches them in), averaged over
    estimator.orders batch orders (the expected fine-tune)."""
    from core.estimate.estimator import score
    from core.estimate.replay import expected_replay

    feats = tasks(n_tasks=4)
    cfg = parse_config({"tasks": list(feats), "training": {"epochs": 2, "lr": 0.05}})
    assert cfg.estimator.method == "replay" and cfg.estimator.orders > 1
    ws = Workspace(tmp_path).ensure()
    wi = WhatIf.from_workspace(cfg, ws, loader=lambda _ws, n: feats[n])
    out = wi.predict([["t2", "t0"], ["t1", "t3"]])
    fit = expected_replay([feats["t0"], feats["t2"]], cfg.training, cfg.estimator.orders)
    assert out["t2"] == {
        **score(feats["t2"], fit),
        "group": 0,
        "reg": 0.0,
        "norm": out["t2"]["norm"],
    }
    assert out["t2"]["norm"] == pytest.approx(fit.norm) and out["t2"]["norm"] > 0


def test_from_workspace_and_functional_twin(tmp_path):
    feats = tasks(n_tasks=4)
    cfg = parse_config({"tasks": list(feats), "estimator": {"method": "argmin", "max_norm": 0.3}})
    ws = Workspace(tmp_path).ensure()
    wi = WhatIf.from_workspace(cfg, ws, loader=lambda _ws, n: feats[n])
    groups = [["t0", "t1"], ["t2", "t3"]]
    out = predict_partition(cfg, ws, groups, loader=lambda _ws, n: feats[n])
    assert out == wi.predict(groups)
    assert all(row["norm"] <= 0.3 for row in out.values())


def test_moving_one_task_refits_only_the_two_groups_it_touches():
    """Speed is measured in bench/; here the count of fits that speed comes from."""
    feats = tasks(n_tasks=10, k=400, n=150, m=60)
    wi = WhatIf(feats, max_norm=1.0)
    names = list(feats)
    first = wi.predict([names[:3], names[3:7], names[7:]])
    assert wi.n_fits_ == 3
    moved = wi.predict([names[:4], names[4:7], names[7:]])  # names[3] moved: two refits
    assert wi.n_fits_ == 5
    assert moved[names[8]] == first[names[8]]  # the untouched group's prediction is reused
    assert wi.predict([names[:4], names[4:7], names[7:]]) == moved and wi.n_fits_ == 5
