"""End to end through the CLI on a tiny real model: every step, then the report's numbers are
checked against the files the steps wrote."""

from __future__ import annotations

import json

import pytest
from conftest import write_tiny_experiment

from core.cli import main


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    return write_tiny_experiment(root), root / "ws"


def _cli(capsys, *args) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--json"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    return json.loads(out)


def test_full_pipeline_through_cli(experiment, capsys):
    config, ws = experiment
    common = ["--config", str(config), "--workspace", str(ws)]
    init = _cli(capsys, "init", *common)
    assert init["shared_answer_words"] == [
        {"tasks": ["reviews_a", "reviews_b"], "words": [" negative", " positive"]}
    ]

    zero = _cli(capsys, "evaluate", *common, "--zero-shot")["zero_shot"]
    assert set(zero) == {"reviews_a", "reviews_b", "topics", "mean"}
    assert all(0 <= zero[t]["accuracy"] <= 1 for t in zero)

    grads = _cli(capsys, "gradients", *common)
    assert all(r["rows_computed"] == 24 for r in grads.values())  # 16 train + 8 val
    again = _cli(capsys, "gradients", *common)
    assert all(r["rows_computed"] == 0 and r["status_before"] == "fresh" for r in again.values())

    aff = _cli(capsys, "affinity", "--workspace", str(ws))
    T = aff["affinity"]
    assert aff["tasks"] == ["reviews_a", "reviews_b", "topics"] and aff["subsets"] == 3
    assert all(T[i][j] == pytest.approx(T[j][i]) for i in range(3) for j in range(3))
    assert all(T[i][i] == 0 for i in range(3))

    sweep = _cli(capsys, "group", "--workspace", str(ws), "--sweep")
    assert {e["m"] for e in sweep} == {1, 2, 3}
    grouping = _cli(capsys, "group", "--workspace", str(ws), "--m", "2")
    assert grouping["m"] == 2 and sorted(sum(grouping["groups"], [])) == sorted(aff["tasks"])
    same = next(e for e in sweep if e["m"] == 2 and e["method"] == grouping["method"])
    assert same["predicted"] == grouping["predicted"]  # the sweep and the what-if agree

    trained = _cli(capsys, "train", "--workspace", str(ws))
    assert set(trained) == {"group-0", "group-1", "baseline"}

    evaluated = _cli(capsys, "evaluate", "--workspace", str(ws))
    assert {"zero_shot", "baseline", "ensemble"} <= set(evaluated)

    report = _cli(capsys, "report", "--workspace", str(ws))
    assert report["groups"] == grouping["groups"]
    for model in ("zero_shot", "baseline", "ensemble"):
        for task in aff["tasks"]:
            assert report["accuracy"][model][task] == evaluated[model][task]["accuracy"]
    flops = report["flops"]
    for key in (
        "gradients",
        "group_training",
        "baseline_training",
        "ensemble_inference_per_example",
        "baseline_inference_per_example",
    ):
        assert flops[key] and flops[key] > 0, key
