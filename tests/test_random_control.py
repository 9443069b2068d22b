"""The random grouping control (core.grouping.random_control): one file and this test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dashboard import cli, copy_workspace

from core.cli import main
from core.grouping.choose import sweep
from core.grouping.methods import METHODS, SWEPT, group_tasks
from core.grouping.partition import GroupingError, labels_to_groups
from core.grouping.random_control import RandomGrouping


def test_tasks_are_dealt_into_m_even_groups_by_the_seed_alone():
    rng = np.random.default_rng(0)
    T = rng.normal(size=(7, 7))
    T = T + T.T
    labels = group_tasks(T, 3, method="random", random_state=4)
    assert sorted(np.bincount(labels)) == [2, 2, 3]
    again = RandomGrouping(3, random_state=4).fit(np.zeros((7, 7))).labels_
    np.testing.assert_array_equal(labels, again)  # blind to the affinity
    others = {tuple(group_tasks(T, 3, method="random", random_state=s)) for s in range(6)}
    assert len(others) > 1  # the seed deals


def test_given_sizes_are_kept_and_bad_ones_refused():
    est = RandomGrouping(2, random_state=1, sizes=[4, 1]).fit(np.eye(5))
    assert sorted(np.bincount(est.labels_)) == [1, 4]
    assert est.objective_ == pytest.approx(1.0 + 1.0)  # identity T: (1/4)·4 + (1/1)·1
    with pytest.raises(GroupingError, match="sizes"):
        RandomGrouping(2, sizes=[4, 2]).fit(np.eye(5))


def test_a_control_is_registered_but_never_a_candidate():
    assert METHODS["random"] is RandomGrouping and "random" not in SWEPT

    def predict(groups):
        return {t: {"loss": 1.0, "accuracy": 0.5} for g in groups for t in g}

    entries = sweep(np.eye(4), list("abcd"), predict)
    assert {e["method"] for e in entries} == set(SWEPT)


def test_the_group_command_chooses_it_given_m(real_ws, capsys):
    ws = copy_workspace(real_ws, "random_control")
    chosen = cli("group", "--workspace", ws, "--method", "random", "--m", "2")
    assert chosen["method"] == "random" and len(chosen["groups"]) == 2
    names = json.loads((ws / "affinity.json").read_text())["tasks"]
    expected = RandomGrouping(2, random_state=0).fit(np.zeros((len(names), len(names))))
    assert chosen["groups"] == labels_to_groups(expected.labels_, names)
    assert main(["group", "--workspace", str(ws), "--method", "random"]) == 2
    assert "is a control: give m" in capsys.readouterr().err
