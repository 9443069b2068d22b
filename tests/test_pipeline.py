"""End to end through the CLI on a tiny real model: every step, then the report's numbers are
checked against the files the steps wrote."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import sentiment_rows, write_task

from core.cli import main


def _topic_rows(n, offset=0):
    topics = [("sports", "The team won the game"), ("politics", "The president spoke to the party")]
    return [
        {
            "text": f"{topics[(i + offset) % 2][1]} number {i + offset}.",
            "label": topics[(i + offset) % 2][0],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    senti = {"negative": " negative", "positive": " positive"}
    for name, off in (("reviews_a", 0), ("reviews_b", 40)):
        write_task(
            root / "tasks",
            name,
            {
                "train": sentiment_rows(16, off),
                "val": sentiment_rows(8, off + 100),
                "test": sentiment_rows(8, off + 200),
            },
            senti,
        )
    write_task(
        root / "tasks",
        "topics",
        {"train": _topic_rows(16), "val": _topic_rows(8, 50), "test": _topic_rows(8, 90)},
        {"sports": " sports", "politics": " politics"},
        template="News: {text}\nTopic:",
    )
    cfg = {
        "name": "tiny",
        "model": {"name": "tiny-llama", "quantization": "none"},
        "data": {"root": "tasks", "max_tokens": 48},
        "tasks": ["reviews_a", "reviews_b", "topics"],
        "features": {"k": 32, "batch_size": 8},
        "estimator": {"subsets": 3, "subset_size": 2},
        "training": {"epochs": 1, "batch_size": 8, "lr": 0.001},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, root / "ws"


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
