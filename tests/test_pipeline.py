"""End to end through the CLI on a tiny real model: every step, then the report's numbers are
checked against the files the steps wrote."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from conftest import write_tiny_experiment

from core.cli import main


def _cli(*args) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([*map(str, args), "--json"])
    assert exit_info.value.code == 0, out.getvalue()
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    """Every step once through the CLI, in order; each step's JSON result by name. Tests that
    change the workspace work on a copy."""
    root = tmp_path_factory.mktemp("e2e")
    config, ws = write_tiny_experiment(root), root / "ws"
    common = ["--config", config, "--workspace", ws]
    out = {"config": config, "ws": ws, "init": _cli("init", *common)}
    out["zero"] = _cli("evaluate", *common, "--zero-shot")["zero_shot"]
    out["grads"] = _cli("gradients", *common)
    out["again"] = _cli("gradients", *common)
    out["aff"] = _cli("affinity", "--workspace", ws)
    out["sweep"] = _cli("group", "--workspace", ws, "--sweep")
    out["grouping"] = _cli("group", "--workspace", ws, "--m", "2")
    out["trained"] = _cli("train", "--workspace", ws)
    out["evaluated"] = _cli("evaluate", "--workspace", ws)
    out["report"] = _cli("report", "--workspace", ws)
    return out


def test_full_pipeline_through_cli(pipeline):
    p = pipeline
    assert p["init"]["shared_answer_words"] == [
        {"tasks": ["reviews_a", "reviews_b"], "words": [" negative", " positive"]}
    ]

    zero = p["zero"]
    assert set(zero) == {"reviews_a", "reviews_b", "topics", "mean"}
    stored = json.loads((p["ws"] / "eval" / "zero_shot.json").read_text())["metrics"]
    assert stored == zero  # what the command printed is what it wrote
    tasks = ["reviews_a", "reviews_b", "topics"]
    assert zero["mean"]["accuracy"] == pytest.approx(np.mean([zero[t]["accuracy"] for t in tasks]))

    assert all(r["rows_computed"] == 24 for r in p["grads"].values())  # 16 train + 8 val
    again = p["again"]
    assert all(r["rows_computed"] == 0 and r["status_before"] == "fresh" for r in again.values())

    aff = p["aff"]
    T = aff["affinity"]
    assert aff["tasks"] == tasks and aff["subsets"] == 3
    assert all(T[i][j] == pytest.approx(T[j][i]) for i in range(3) for j in range(3))
    assert all(T[i][i] == 0 for i in range(3))

    sweep, grouping = p["sweep"], p["grouping"]
    assert {e["m"] for e in sweep} == {1, 2, 3}
    assert grouping["m"] == 2 and sorted(sum(grouping["groups"], [])) == sorted(aff["tasks"])
    same = next(e for e in sweep if e["m"] == 2 and e["method"] == grouping["method"])
    assert same["predicted"] == grouping["predicted"]  # the sweep and the what-if agree

    assert set(p["trained"]) == {"group-0", "group-1", "baseline"}
    evaluated = p["evaluated"]
    assert {"zero_shot", "baseline", "ensemble"} <= set(evaluated)

    report = p["report"]
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


def test_regrouping_reuses_adapters_of_the_same_task_sets(pipeline, tmp_path):
    """Swapping the groups' order moves each finished adapter (same tasks, same recipe) to its
    new index instead of training it again; the old folders are kept under subset-<hash>."""
    import shutil

    from core.config import load_config
    from core.pipeline import chosen_groups, edit_groups
    from core.validate.subsets import adapter_name
    from core.workspace import Workspace

    config, root = pipeline["config"], pipeline["ws"].parent / "ws-regroup"  # a sibling copy:
    shutil.copytree(
        pipeline["ws"], root, ignore=shutil.ignore_patterns("jobs.db*")
    )  # paths resolve
    ws = Workspace(root)
    old = chosen_groups(ws)
    assert old == pipeline["grouping"]["groups"] and len(old) == 2
    weights = {
        tuple(g): (ws.adapter_dir(f"group-{i}") / "adapter_model.safetensors").read_bytes()
        for i, g in enumerate(old)
    }
    edit_groups(load_config(config), ws, [old[1], old[0]])
    trained = _cli("train", "--workspace", root, "--adapter", "groups")
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
