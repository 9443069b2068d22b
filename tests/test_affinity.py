"""core.estimate.affinity: subset sampling, the per-subset table, T on planted blocks, the pipeline step."""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from math import comb

import numpy as np
import pandas as pd
import pytest

import core.estimate.affinity as affinity
from core.config import parse_config
from core.errors import GroupTuneError
from core.estimate.affinity import (
    TaskAffinity,
    affinity_matrix,
    all_pairs,
    compute_affinity,
    cooccurrence,
    sample_subsets,
    score_subsets,
)
from core.estimate.estimator import argmin_fitter
from core.gradients.store import TaskFeatures
from core.workspace import Workspace


def block_task(rng, u, k, n=40, m=30, noise=0.3, name="t"):
    """A task whose train gradients and gold-vs-other val gradients share direction u + own."""
    v = rng.normal(size=k)
    d = u + 0.5 * v / np.linalg.norm(v)
    d /= np.linalg.norm(d)
    z = rng.normal(size=(m, 2)) * 0.3
    gold = rng.integers(0, 2, m)
    G = rng.normal(size=(m, 2, k)) * noise
    G[np.arange(m), gold] += d
    G[np.arange(m), 1 - gold] -= d
    return TaskFeatures(
        train_h=rng.normal(-0.3, 0.3, n),
        train_g=d + rng.normal(size=(n, k)) * noise,
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


def planted(seed=0, k=16, blocks=3, per=3):
    """blocks x per tasks; block directions 120° apart in a plane, so blocks oppose each other."""
    rng = np.random.default_rng(seed)
    feats, label = {}, {}
    for b in range(blocks):
        u = np.zeros(k)
        u[:2] = np.cos(2 * np.pi * b / blocks), np.sin(2 * np.pi * b / blocks)
        for j in range(per):
            name = f"b{b}t{j}"
            feats[name], label[name] = block_task(rng, u, k, name=name), b
    return feats, label


# ---------------------------------------------------------------- sampling


def test_sampling_is_distinct_balanced_and_seeded():
    names = [f"t{i}" for i in range(10)]
    subsets = sample_subsets(names, 30, 3, seed=0)
    assert len(subsets) == len(set(subsets)) == 30
    assert all(len(s) == 3 and list(s) == sorted(s, key=names.index) for s in subsets)
    counts = Counter(t for s in subsets for t in s)
    assert set(counts) == set(names) and max(counts.values()) - min(counts.values()) <= 1
    assert sample_subsets(names, 30, 3, seed=0) == subsets
    assert sample_subsets(names, 30, 3, seed=1) != subsets
    big = sample_subsets([f"t{i}" for i in range(60)], 100, 20, seed=0)  # sampled, not listed
    counts = Counter(t for s in big for t in s)
    assert len(set(big)) == 100 and max(counts.values()) - min(counts.values()) <= 1


def test_sampling_limits():
    names = ["a", "b", "c", "d"]
    assert sorted(sample_subsets(names, 50, 3)) == sorted(combinations(names, 3))
    assert len(sample_subsets(names, 50, 3)) == comb(4, 3)
    with pytest.raises(GroupTuneError, match="between 1 and the number of tasks"):
        sample_subsets(names, 3, 5)
    with pytest.raises(GroupTuneError, match="repeat"):
        sample_subsets(["a", "a", "b"], 2, 2)
    assert all_pairs(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]


# ---------------------------------------------------------------- the table and T


def test_planted_blocks_are_recovered():
    feats, label = planted()
    names = list(feats)
    K = 40
    subsets = sample_subsets(names, K, 3, seed=0)
    table = score_subsets(feats, subsets, argmin_fitter(None, 1.0), progress=False)
    assert len(table) == K * 3 and list(table.columns) == affinity.COLUMNS
    assert (table["norm"] <= 1.0).all() and (table["loss"] < table["base_loss"]).mean() > 0.5
    same = np.array([[label[a] == label[b] for b in names] for a in names])
    off = ~np.eye(len(names), dtype=bool)
    for metric in ("loss", "accuracy"):
        T = affinity_matrix(table, names, metric)
        assert np.allclose(T, T.T) and np.all(np.diag(T) == 0)
        assert T[same & off].mean() > 0.3 and T[~same].mean() < -0.1


def test_affinity_matrix_by_hand():
    # 3 tasks, pairs; task a's losses 1 (with b), 3 (with c): z = +1 with b, -1 with c
    table = pd.DataFrame(
        {
            "subset_id": [0, 0, 1, 1, 2, 2],
            "subset": ["a+b", "a+b", "a+c", "a+c", "b+c", "b+c"],
            "task": ["a", "b", "a", "c", "b", "c"],
            "loss": [1.0, 2.0, 3.0, 5.0, 2.0, 5.0],
            "accuracy": 0.5,
        }
    )
    T = affinity_matrix(table, ["a", "b", "c"], "loss")
    # z: a|b=+1, a|c=-1, b|a=0, b|c=0 (std 0 -> 0), c|a=0, c|b=0 (std 0)
    expected = np.array([[0, 0.5, -0.5], [0.5, 0, 0], [-0.5, 0, 0]])
    np.testing.assert_allclose(T, expected)
    assert np.all(affinity_matrix(table, ["a", "b", "c"], "accuracy") == 0)  # constant: no NaN
    with pytest.raises(GroupTuneError, match="metric"):
        affinity_matrix(table, ["a", "b", "c"], "f1")


def test_pairs_never_sampled_together_get_zero():
    feats, _ = planted(per=2)
    names = list(feats)
    subsets = [tuple(names[:3]), tuple(names[3:])]
    table = score_subsets(feats, subsets, argmin_fitter(None, 1.0), progress=False)
    counts = cooccurrence(table, names)
    T = affinity_matrix(table, names)
    assert counts[0, 5] == 0 and T[0, 5] == 0 and counts[0, 1] == 1
    with pytest.raises(GroupTuneError, match="unknown tasks"):
        score_subsets(feats, [("b0t0", "nope")], argmin_fitter(None, 1.0), progress=False)


def test_task_affinity_estimator_in_pairs_mode():
    feats, _ = planted(blocks=2, per=2)
    est = TaskAffinity(pairs=True, max_norm=1.0)
    assert est.fit(feats) is est
    n = len(feats)
    assert len(est.subsets_) == n * (n - 1) // 2 and len(est.table_) == n * (n - 1)
    assert np.all(est.cooccurrence_ == 1 - np.eye(n))
    assert est.affinity_matrix_.shape == (n, n)


# ---------------------------------------------------------------- the pipeline step


def _cfg(names, **estimator):
    return parse_config(
        {"tasks": names, "estimator": {"subsets": 12, "subset_size": 3, **estimator}}
    )


def test_compute_affinity_persists_and_reuses(tmp_path, monkeypatch):
    feats, label = planted(blocks=2, per=3)
    names = list(feats)
    ws = Workspace(tmp_path).ensure()

    def loader(_ws, name):
        return feats[name]

    result = compute_affinity(_cfg(names), ws, loader=loader, progress=False)
    assert result["tasks"] == names and result["subsets"] == 12 and result["metric"] == "loss"
    assert set(result["base"]) == set(names) and set(result["single"]) == set(names)
    assert result["single"]["b0t0"]["norm"] <= 1.0
    T = np.array(result["affinity"])
    assert T.shape == (6, 6) and np.allclose(T, T.T)
    assert ws.read("affinity.json") == result
    stored = ws.read("estimates", "subsets.json")
    assert stored["settings"]["K"] == 12 and len(stored["subsets"]) == 12
    assert len(pd.read_csv(ws.path("estimates", "results.csv"))) == 36

    def refuse(*a, **k):
        raise AssertionError("recomputed although nothing changed")

    monkeypatch.setattr(affinity, "score_subsets", refuse)
    assert compute_affinity(_cfg(names), ws, loader=loader) == result
    # another metric: T from the stored table, same subsets, no refit
    acc = compute_affinity(_cfg(names, metric="accuracy"), ws, loader=loader)
    assert acc["metric"] == "accuracy" and acc["counts"] == result["counts"]
    monkeypatch.undo()
    # other settings: subsets redrawn, table recomputed
    more = compute_affinity(_cfg(names, subsets=15), ws, loader=loader, progress=False)
    assert more["subsets"] == 15 and len(ws.read("estimates", "subsets.json")["subsets"]) == 15


def test_compute_affinity_rejects_mixed_k(tmp_path):
    feats, _ = planted(blocks=1, per=3)
    feats["other"] = planted(seed=1, k=8, blocks=1, per=1)[0]["b0t0"]
    ws = Workspace(tmp_path).ensure()
    with pytest.raises(GroupTuneError, match="different projected dimensions"):
        compute_affinity(_cfg(list(feats)), ws, loader=lambda _ws, n: feats[n], progress=False)


def test_compute_affinity_explains_impossible_settings(tmp_path):
    feats, _ = planted(blocks=1, per=2)
    ws = Workspace(tmp_path).ensure()
    with pytest.raises(GroupTuneError, match="estimator.subset_size"):
        compute_affinity(_cfg(list(feats)), ws, loader=lambda _ws, n: feats[n])
    with pytest.raises(GroupTuneError, match="at least 2 tasks"):
        compute_affinity(_cfg(["b0t0"]), ws, loader=lambda _ws, n: feats[n])
    pairs = compute_affinity(_cfg(list(feats), pairs=True), ws, loader=lambda _ws, n: feats[n])
    assert pairs["subsets"] == 1 and pairs["counts"] == [[0, 1], [1, 0]]


def test_bad_rows_are_named_before_any_fit():
    feats, _ = planted(blocks=1, per=3)
    feats["b0t2"].val_G = feats["b0t2"].val_G.copy()
    feats["b0t2"].val_G[7, 1, 0] = np.inf
    with pytest.raises(GroupTuneError, match=r"'b0t2'.*val_G.*row index 7"):
        score_subsets(
            feats, [("b0t0", "b0t1"), ("b0t1", "b0t2")], argmin_fitter(None, 1.0), progress=False
        )
