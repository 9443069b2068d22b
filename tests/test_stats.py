"""core.stats: the paired bootstrap of the ensemble's gain, on hand-made samples whose answer
is known."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import GroupTuneError
from core.stats import paired_gain, paired_sample


def rows(ones: int, n: int) -> list[int]:
    return [1] * ones + [0] * (n - ones)


def test_identical_differences_collapse_the_interval_onto_the_point():
    # every row of a is won, every row of b tied, in each of 3 seeds: nothing to resample
    seed = {"a": (rows(20, 20), rows(0, 20)), "b": (rows(5, 10), rows(5, 10))}
    out = paired_gain([seed] * 3)
    assert out["points"] == pytest.approx(50.0)
    assert out["ci"] == pytest.approx([50.0, 50.0])
    assert (out["seeds"], out["rows"], out["replicates"], out["level"]) == (3, 30, 2000, 0.95)


def test_equal_models_gain_nothing():
    rng = np.random.default_rng(3)
    seeds = []
    for _ in range(2):
        correct = rng.integers(0, 2, size=50)
        seeds.append({"a": (correct, correct.copy()), "b": (correct[::-1], correct[::-1])})
    out = paired_gain(seeds)
    assert out["points"] == 0.0 and out["ci"] == [0.0, 0.0]
    assert out["per_task"]["a"] == {"points": 0.0, "wins": 0, "losses": 0, "ties": 2}


def test_one_seed_matches_the_normal_interval_of_a_paired_mean():
    # 400 rows: 100 won (+1), 60 lost (−1), 240 tied; mean 0.1, variance 0.4 − 0.01
    n = 400
    ens = np.array([1] * 100 + [0] * 60 + [0] * 240)
    base = np.array([0] * 100 + [1] * 60 + [0] * 240)
    out = paired_gain([{"a": (ens, base)}], replicates=4000)
    half = 100 * 1.96 * np.sqrt(0.39) / np.sqrt(n)  # 6.1 points
    assert out["points"] == pytest.approx(10.0)
    assert out["ci"] == pytest.approx([10.0 - half, 10.0 + half], abs=0.5)


def test_paired_rows_are_drawn_together():
    # the two models get exactly the same rows right: unpaired resampling would not give 0 width
    correct = rows(30, 60)
    out = paired_gain([{"a": (correct, correct)}])
    assert out["ci"] == [0.0, 0.0]


def test_seeds_are_resampled():
    # one seed wins every row, the other ties every row: rows add no noise, seeds all of it;
    # draws of (win, win), mixed, (tie, tie) give 100, 50, 0 points with odds 1/4, 1/2, 1/4
    win, tie = {"a": (rows(8, 8), rows(0, 8))}, {"a": (rows(0, 8), rows(0, 8))}
    out = paired_gain([win, tie])
    assert out["points"] == pytest.approx(50.0) and out["ci"] == pytest.approx([0.0, 100.0])


def test_seeds_share_the_test_rows():
    # copies of one seed are one seed: the test set's luck is shared, not averaged away
    rng = np.random.default_rng(5)
    seed = {"a": (rng.integers(0, 2, 200), rng.integers(0, 2, 200))}
    width = lambda out: out["ci"][1] - out["ci"][0]  # noqa: E731
    one, copies = paired_gain([seed]), paired_gain([seed] * 4)
    assert width(copies) == pytest.approx(width(one), rel=0.1)


def test_seeds_that_disagree_widen_the_interval():
    n = 100
    same = [{"a": (rows(10, n), rows(0, n))}] * 4  # 10 points in each seed
    apart = [{"a": (rows(k, n), rows(0, n))} for k in (20, 0, 20, 0)]  # 10 points on average
    narrow, wide = paired_gain(same), paired_gain(apart)
    assert narrow["points"] == pytest.approx(wide["points"])
    width = lambda out: out["ci"][1] - out["ci"][0]  # noqa: E731
    assert width(wide) > 1.5 * width(narrow)


def test_per_task_gain_and_wins_over_seeds():
    seeds = [
        {"a": (rows(3, 4), rows(1, 4)), "b": (rows(1, 2), rows(1, 2))},  # a +50, b 0
        {"a": (rows(1, 4), rows(2, 4)), "b": (rows(2, 2), rows(0, 2))},  # a −25, b +100
        {"a": (rows(4, 4), rows(2, 4)), "b": (rows(0, 2), rows(1, 2))},  # a +50, b −50
    ]
    out = paired_gain(seeds)
    a, b = out["per_task"]["a"], out["per_task"]["b"]
    assert (a["wins"], a["losses"], a["ties"]) == (2, 1, 0)
    assert (b["wins"], b["losses"], b["ties"]) == (1, 1, 1)
    assert a["points"] == pytest.approx(25.0) and b["points"] == pytest.approx(50 / 3)
    assert out["points"] == pytest.approx((25.0 + 50 / 3) / 2)  # tasks count once each
    assert out["rows"] == 6 and out["ci"][0] < out["points"] < out["ci"][1]


def test_seeded():
    rng = np.random.default_rng(0)
    seeds = [
        {f"t{t}": (rng.integers(0, 2, 150), rng.integers(0, 2, 150)) for t in range(10)}
        for _ in range(5)
    ]
    out = paired_gain(seeds)
    assert paired_gain(seeds) == out
    assert paired_gain(seeds, seed=1)["ci"] != out["ci"]


def test_paired_sample_from_eval_files():
    assert paired_sample({"a": [1, 0]}, {"a": [0, 0]}) == {"a": ([1, 0], [0, 0])}
    with pytest.raises(GroupTuneError, match=r"ensemble was scored on tasks \['a', 'b'\]"):
        paired_sample({"a": [1], "b": [1]}, {"a": [1]})


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([], "no seeds"),
        ([{}], "seed 0 has no tasks"),
        ([{"a": ([1, 0, 1], [1, 0])}], r"task 'a': 3 ensemble rows but 2 baseline rows"),
        ([{"a": ([1], [1])}, {"b": ([1], [1])}], r"seed 1 has tasks \['b'\]"),
        ([{"a": ([1], [1])}, {"a": ([1, 0], [1, 0])}], "2 test rows in seed 1 but 1 in seed 0"),
        ([{"a": ([1, 2], [1, 0])}], "ensemble must be a non-empty list of 0/1"),
        ([{"a": ([], [])}], "non-empty"),
        ([{"a": [1, 0, 1]}], r"must be \(ensemble rows, baseline rows\)"),
    ],
)
def test_bad_samples_are_refused(samples, message):
    with pytest.raises(GroupTuneError, match=message):
        paired_gain(samples)
