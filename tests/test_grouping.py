"""Tests for core.grouping.partition and .choose on hand-built matrices whose right answer is known."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from core.grouping.choose import recommend_m, sweep
from core.grouping.edit import merge_groups, move_task, split_group
from core.grouping.methods import group_tasks
from core.grouping.partition import (
    GroupingError,
    SDPGrouping,
    SolverFallbackWarning,
    SpectralGrouping,
    canonical_labels,
    clustering_objective,
    groups_to_labels,
    labels_to_groups,
    validate_affinity,
)


def planted(sizes, seed, within=1.0, across=-0.5, noise=0.1):
    """Block affinity (n, n) with symmetric Gaussian noise, tasks shuffled; and its labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(labels)
    T = np.where(labels[:, None] == labels[None, :], within, across)
    E = rng.normal(0.0, noise, T.shape)
    T = T + (E + E.T) / 2
    np.fill_diagonal(T, 0.0)
    return T, canonical_labels(labels)


def random_symmetric(n, seed):
    A = np.random.default_rng(seed).normal(size=(n, n))
    return (A + A.T) / 2


def make_predict(T_true, names, calls=None):
    """A real what-if model: a task gains from the mean true affinity of its group-mates."""
    index = {t: k for k, t in enumerate(names)}

    def predict(groups):
        if calls is not None:
            calls.append([list(g) for g in groups])
        out = {}
        for group in groups:
            for task in group:
                mates = [index[o] for o in group if o != task]
                gain = float(np.mean(T_true[index[task], mates])) if mates else 0.0
                out[task] = {"accuracy": 0.6 + 0.1 * gain, "loss": 0.7 - 0.2 * gain}
        return out

    return predict


SIZES = [(3, 4, 3), (4, 3, 4), (3, 3, 3, 3)]


# ---------------------------------------------------------------- planted recovery


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sizes", SIZES)
def test_planted_blocks_recovered_by_sdp_and_spectral(sizes, seed):
    T, truth = planted(sizes, seed)
    m = len(sizes)
    sdp = SDPGrouping(m=m).fit(T)
    assert sdp.fallback_reason_ is None and sdp.solver_ in ("CLARABEL", "SCS")
    np.testing.assert_array_equal(sdp.labels_, truth)
    np.testing.assert_array_equal(SpectralGrouping(m, random_state=seed).fit(T).labels_, truth)
    np.testing.assert_array_equal(group_tasks(T, m, method="spectral"), truth)
    # the relaxation bounds the rounded objective from above (up to solver tolerance)
    assert sdp.objective_ <= sdp.sdp_value_ + 1e-5


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sizes", SIZES)
def test_penalised_sdp_finds_planted_m(sizes, seed):
    T, truth = planted(sizes, seed)
    est = SDPGrouping(penalty=0.0).fit(T)
    assert est.labels_.max() + 1 == len(sizes)
    np.testing.assert_array_equal(est.labels_, truth)
    # a heavy penalty on tr(X) (= number of groups) drives it to one group
    assert SDPGrouping(penalty=50.0).fit(T).labels_.max() == 0


def test_labels_are_canonical_and_invariant_to_relabelling():
    T, truth = planted((3, 4, 3), 0)
    labels = group_tasks(T, 3)
    assert labels[0] == 0 and list(dict.fromkeys(labels.tolist())) == [0, 1, 2]
    perm = np.random.default_rng(1).permutation(len(T))
    relabelled = group_tasks(T[np.ix_(perm, perm)], 3)
    np.testing.assert_array_equal(relabelled, canonical_labels(truth[perm]))


# ---------------------------------------------------------------- partitions are valid


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_every_partition_covers_each_task_once_with_m_groups(n, seed):
    T = random_symmetric(n, seed)
    names = [f"t{k}" for k in range(n)]
    for m in range(1, n + 1):
        for method in ("sdp", "spectral"):
            labels = group_tasks(T, m, method=method, random_state=seed)
            assert labels.shape == (n,) and sorted(set(labels.tolist())) == list(range(m))
            groups = labels_to_groups(labels, names)
            assert sorted(t for g in groups for t in g) == sorted(names)
            np.testing.assert_array_equal(groups_to_labels(groups, names), labels)


def test_ties_identical_rows_and_constant_matrix_do_not_crash():
    T = np.ones((6, 6))  # every task identical
    for m in range(1, 7):
        for method in ("sdp", "spectral"):
            assert len(set(group_tasks(T, m, method=method).tolist())) == m
    T = np.kron(np.eye(2), np.ones((3, 3)))  # two sets of identical rows
    np.testing.assert_array_equal(group_tasks(T, 2, method="spectral"), [0, 0, 0, 1, 1, 1])
    assert SDPGrouping(penalty=0.0).fit(np.zeros((4, 4))).labels_.shape == (4,)
    np.testing.assert_array_equal(SDPGrouping(penalty=0.0).fit([[0.0]]).labels_, [0])


def test_repair_merges_and_splits_by_objective():
    from core.grouping.partition import _repair_to_m

    T, truth = planted((3, 3), 0)
    np.testing.assert_array_equal(_repair_to_m(T, np.arange(6), 2), truth)  # merge up
    T = np.array([[0, 1, 1, -1], [1, 0, 1, -1], [1, 1, 0, -1], [-1, -1, -1, 0]], dtype=float)
    np.testing.assert_array_equal(_repair_to_m(T, np.zeros(4, int), 2), [0, 0, 0, 1])  # peel
    np.testing.assert_array_equal(_repair_to_m(T, np.zeros(4, int), 4), [0, 1, 2, 3])


def test_clustering_objective_is_normalised_within_group_affinity():
    T = np.array([[0, 2, 0], [2, 0, 1], [0, 1, 0]], dtype=float)
    names = ["a", "b", "c"]
    assert clustering_objective(T, [["a", "b"], ["c"]], names) == pytest.approx(2.0)
    assert clustering_objective(T, [0, 0, 0]) == pytest.approx(6 / 3)
    assert clustering_objective(T, [0, 1, 2]) == pytest.approx(0.0)


# ---------------------------------------------------------------- bad inputs


def test_bad_affinity_messages():
    with pytest.raises(GroupingError, match=r"not symmetric \(max \|T-Tᵀ\| = 1"):
        validate_affinity([[0, 1], [0, 0]])
    T = np.zeros((3, 3))
    T[1, 2] = np.nan
    with pytest.raises(GroupingError, match=r"NaN/inf at \(1, 2\) \(task b, task c\)"):
        validate_affinity(T, names=["a", "b", "c"])
    with pytest.raises(GroupingError, match="numeric"):
        validate_affinity([["a", "b"], ["c", "d"]])
    with pytest.raises(GroupingError, match="square"):
        validate_affinity(np.zeros((2, 3)))
    with pytest.raises(GroupingError, match="unique"):
        validate_affinity(np.zeros((2, 2)), names=["a", "a"])
    with pytest.raises(ValueError, match="not symmetric"):  # GroupingError is a ValueError
        SpectralGrouping(2).fit([[0, 1, 0], [0, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize("m", [0, 4, -1, 2.5, True, None])
def test_m_out_of_range(m):
    T = random_symmetric(3, 0)
    with pytest.raises(GroupingError, match="m \\(number of groups\\) must be"):
        SpectralGrouping(m).fit(T)
    if m is not None:
        with pytest.raises(GroupingError, match="m \\(number of groups\\) must be"):
            SDPGrouping(m=m).fit(T)


def test_other_bad_arguments():
    T = random_symmetric(3, 0)
    with pytest.raises(GroupingError, match="not both"):
        SDPGrouping(m=2, penalty=1.0).fit(T)
    with pytest.raises(GroupingError, match="unknown grouping method"):
        group_tasks(T, 2, method="kmeans")
    with pytest.raises(GroupingError, match="tasks in no group"):
        groups_to_labels([["a"]], ["a", "b"])
    with pytest.raises(GroupingError, match="unknown task"):
        groups_to_labels([["a", "z"], ["b"]], ["a", "b"])


# ---------------------------------------------------------------- solver fallback


def test_unknown_solver_falls_back_to_spectral_and_says_so():
    T, truth = planted((3, 4, 3), 0)
    with pytest.warns(SolverFallbackWarning, match="NOT_A_SOLVER"):
        est = SDPGrouping(m=3, solver="NOT_A_SOLVER").fit(T)
    assert "fell back to spectral" in est.fallback_reason_ and est.X_ is None
    np.testing.assert_array_equal(est.labels_, truth)


def test_missing_cvxpy_falls_back_for_fixed_and_penalised(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # makes `import cvxpy` raise ImportError
    T, truth = planted((3, 4, 3), 1)
    with pytest.warns(SolverFallbackWarning, match="cvxpy is not installed"):
        est = SDPGrouping(penalty=0.0).fit(T)
    np.testing.assert_array_equal(est.labels_, truth)
    names = [f"t{k}" for k in range(len(T))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SolverFallbackWarning)
        entries = sweep(T, names, make_predict(T, names), m_values=[3], methods=("sdp",))
    assert [e["m"] for e in entries] == [1, 3, 10]
    assert entries[1]["fallback"].startswith("SDP not used (cvxpy is not installed)")
    assert entries[0]["fallback"] is None  # m = 1 needs no solver


# ---------------------------------------------------------------- sweep and recommendation


def test_sweep_is_consistent_with_predict_and_recommends_planted_m():
    T, truth = planted((3, 4, 3), 2)
    names = [f"task{k}" for k in range(len(T))]
    calls: list = []
    predict = make_predict(T, names, calls)
    entries = sweep(T, names, predict, m_values=range(1, 6))
    assert [(e["m"], e["method"]) for e in entries][:4] == [
        (1, "sdp"), (1, "spectral"), (2, "sdp"), (2, "spectral")
    ]  # fmt: skip
    assert {e["m"] for e in entries} == {1, 2, 3, 4, 5, 10}  # m = n always included
    distinct = {tuple(map(tuple, e["groups"])) for e in entries}
    assert len(calls) == len(distinct)  # one predict call per distinct partition
    for e in entries:
        assert e["predicted"] == predict(e["groups"])
        assert e["mean_accuracy"] == pytest.approx(
            np.mean([e["predicted"][t]["accuracy"] for t in names])
        )
        assert e["objective"] == pytest.approx(clustering_objective(T, e["groups"], names))
        assert e["fallback"] is None and len(e["groups"]) == e["m"]
    assert entries[0]["baseline"] == "all-in-one" and entries[-1]["baseline"] == "singletons"
    m, method, reason = recommend_m(entries)
    assert (m, method) == (3, "sdp") and "m=3" in reason
    planted_entry = next(e for e in entries if e["m"] == 3)
    np.testing.assert_array_equal(groups_to_labels(planted_entry["groups"], names), truth)


def test_recommend_m_rule_and_ties():
    def entry(m, method, acc, loss):
        return {"m": m, "method": method, "mean_accuracy": acc, "mean_loss": loss}

    entries = [
        entry(1, "sdp", 0.70, 0.5),
        entry(2, "sdp", 0.796, 0.4),
        entry(2, "spectral", 0.797, 0.3),
        entry(4, "sdp", 0.80, 0.2),
    ]
    assert recommend_m(entries)[:2] == (2, "spectral")  # within 0.005 of 0.80; lower loss
    assert recommend_m(entries, tolerance=0.0)[:2] == (4, "sdp")
    assert recommend_m(entries, tolerance=0.2)[:2] == (1, "sdp")
    same = [entry(2, "sdp", 0.8, 0.3), entry(2, "spectral", 0.8, 0.3)]
    assert recommend_m(same)[:2] == (2, "sdp")  # full tie: the first listed
    with pytest.raises(GroupingError):
        recommend_m([])


def test_recommend_m_does_not_choose_on_differences_inside_the_uncertainty():
    def entry(m, acc, loss=0.5):
        return {"m": m, "method": "sdp", "mean_accuracy": acc, "mean_loss": loss}

    entries = [entry(1, 0.70), entry(2, 0.76), entry(3, 0.80)]
    assert recommend_m(entries)[0] == 3  # 0.04 apart: told apart at the default tolerance
    m, _, reason = recommend_m(entries, uncertainty=0.025)  # 2 x 0.025 = 0.05 > 0.04
    assert m == 2 and "cannot tell apart m in [2, 3]" in reason and "0.0250" in reason
    assert recommend_m(entries, uncertainty=0.2)[0] == 1
    with pytest.raises(GroupingError, match="uncertainty"):
        recommend_m(entries, uncertainty=float("nan"))


def test_prediction_uncertainty_from_rows_or_validation():
    from core.grouping.choose import prediction_uncertainty

    e = {"predicted": {"a": {"accuracy": 0.5}, "b": {"accuracy": 0.9}}}
    rows = {"a": 100, "b": 36}
    # sqrt(0.25/100 + 0.09/36) / 2 = sqrt(0.0025 + 0.0025) / 2
    assert prediction_uncertainty(e, rows) == pytest.approx(np.sqrt(0.005) / 2)
    assert prediction_uncertainty(e, rows, point_error=0.1) == pytest.approx(0.1 / np.sqrt(2))


def test_sweep_rejects_bad_predict():
    T = random_symmetric(3, 0)
    with pytest.raises(GroupingError, match="every task"):
        sweep(T, ["a", "b", "c"], lambda groups: {"a": {"loss": 1.0, "accuracy": 0.5}})
    with pytest.raises(GroupingError, match="finite loss and accuracy"):
        sweep(T, ["a", "b", "c"], lambda g: {t: {"loss": 1.0} for grp in g for t in grp})


# ---------------------------------------------------------------- edit operations


def test_move_task_creates_and_drops_groups():
    groups = [["a", "b"], ["c"]]
    assert move_task(groups, "a", 2) == [["b"], ["c"], ["a"]]
    assert move_task(groups, "c", 0) == [["a", "b", "c"]]  # the emptied group is dropped
    assert move_task(groups, "a", 0) == groups
    assert groups == [["a", "b"], ["c"]]  # input untouched
    with pytest.raises(GroupingError, match="in no group"):
        move_task(groups, "zz", 0)
    with pytest.raises(GroupingError, match="to_index"):
        move_task(groups, "a", 3)


def test_split_and_merge():
    groups = [["a", "b", "c"], ["d"]]
    assert split_group(groups, 0, ["c", "a"]) == [["b"], ["a", "c"], ["d"]]
    assert merge_groups(groups, 1, 0) == [["a", "b", "c", "d"]]
    with pytest.raises(GroupingError, match="leave at least one"):
        split_group(groups, 0, ["a", "b", "c"])
    with pytest.raises(GroupingError, match="not in group 0"):
        split_group(groups, 0, ["d"])
    with pytest.raises(GroupingError, match="itself"):
        merge_groups(groups, 1, 1)
    with pytest.raises(GroupingError, match="more than one group"):
        merge_groups([["a"], ["a"]], 0, 1)
