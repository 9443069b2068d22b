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


def test_regrouping_reuses_adapters_of_the_same_task_sets(experiment, capsys):
    """Swapping the groups' order moves each finished adapter (same tasks, same recipe) to its
    new index instead of training it again; the old folders are kept under subset-<hash>."""
    from core.config import load_config
    from core.pipeline import chosen_groups, edit_groups
    from core.validation import adapter_name
    from core.workspace import Workspace

    config, root = experiment
    ws = Workspace(root)
    old = chosen_groups(ws)
    assert len(old) == 2  # from the test above
    weights = {
        tuple(g): (ws.adapter_dir(f"group-{i}") / "adapter_model.safetensors").read_bytes()
        for i, g in enumerate(old)
    }
    edit_groups(load_config(config), ws, [old[1], old[0]])
    trained = _cli(capsys, "train", "--workspace", str(root), "--adapter", "groups")
    assert set(trained) == {"group-0", "group-1"}
    for i, group in enumerate([old[1], old[0]]):
        folder = ws.adapter_dir(f"group-{i}")
        record = json.loads((folder / "grouptune.json").read_text())
        assert record["tasks"] == group and record["name"] == f"group-{i}"
        assert record["copied_from"] == adapter_name(group)
        assert (folder / "adapter_model.safetensors").read_bytes() == weights[tuple(group)]
        kept = json.loads((ws.adapter_dir(adapter_name(group)) / "grouptune.json").read_text())
        assert kept["name"] == adapter_name(group) and kept["tasks"] == group
    parts = json.loads(ws.path("accounting.json").read_text())["group_training"]["parts"]
    assert set(parts) == {"group-0", "group-1"} and all(p["flops"] > 0 for p in parts.values())
