"""`grouptune predict` and core.ensemble.Ensemble on the workspace the real engine made
(conftest's real_ws: tiny Llama, three tasks, m = 2, a boosting round): the test split's
predictions reproduce report.json and eval/*.json exactly; --explain's parts add up to the
answer; unknown tasks, rows missing a field and untrained workspaces fail clearly."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from dashboard import cli, copy_workspace

from core.data.sources import select_tasks
from core.ensemble import Ensemble
from core.errors import DataError, GroupTuneError
from core.workspace import Workspace

TASKS = ["reviews_a", "reviews_b", "topics"]


def _test_rows(ws: Workspace, task: str) -> list[dict]:
    return select_tasks(ws.load_config(), [task])[0].rows("test")


def _write_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "text", "label"])
        writer.writeheader()
        writer.writerows({"id": i, **r} for i, r in enumerate(rows))


@pytest.mark.parametrize("task", TASKS)
def test_predict_on_the_test_split_reproduces_the_report(real_ws, tmp_path, task):
    ws = Workspace(real_ws)
    _write_csv(tmp_path / "test.csv", _test_rows(ws, task))
    doc = cli("predict", "--workspace", real_ws, "--task", task, "--input", tmp_path / "test.csv")
    report = ws.read("report.json")
    evaluated = ws.read("eval", "ensemble.json")
    assert doc["labelled"] == len(_test_rows(ws, task)) > 0
    assert doc["accuracy"] == report["accuracy"]["ensemble"][task]  # exactly, not roughly
    right = [int(r["answer"] == r["label"]) for r in doc["rows"]]
    assert right == evaluated["correct"][task]  # row by row
    nll = np.mean([-np.log(r["probabilities"][r["label"]]) for r in doc["rows"]])
    assert nll == pytest.approx(evaluated["metrics"][task]["nll"], rel=1e-12, abs=1e-12)
    own = cli("predict", "--workspace", real_ws, "--task", task, "--split", "test")
    assert [r["probabilities"] for r in own["rows"]] == [r["probabilities"] for r in doc["rows"]]


def test_explain_parts_make_the_answer_and_the_baseline_is_the_evaluated_one(real_ws):
    ws = Workspace(real_ws)
    ens = Ensemble.load(ws, baseline=True)
    manifest = ws.read("ensemble.json")
    for task in TASKS:
        rows = _test_rows(ws, task)
        preds = ens.predict(task, rows, explain=True)
        labels = list(preds[0]["probabilities"])
        for p in preds:
            groups = [v for v in p["adapters"] if v["role"] == "group"]
            assert {v["adapter"]: v["weight"] for v in groups if v["weight"]} == (
                manifest["weights"][task]
            )
            # Σ_k w_k log p_k + Σ_r shift_r has the ensemble's softmax: the parts are the answer
            z = sum(
                v["weight"] * np.log([v["probabilities"][lab] for lab in labels]) for v in groups
            )
            for v in p["adapters"]:
                if v["role"] == "boost":
                    z = z + np.array([v["shift"][lab] for lab in labels])
            mixed = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            np.testing.assert_allclose(mixed, list(p["probabilities"].values()), rtol=1e-9)
        base = [int(p["baseline"]["answer"] == p["label"]) for p in preds]
        assert base == ws.read("eval", "baseline.json")["correct"][task]
    boosted = [b for b in manifest["boosting"] if b["step"] > 0]
    assert boosted, "the fixture's boosting round should be in use"
    task = boosted[0]["tasks"][0]
    votes = ens.predict(task, _test_rows(ws, task)[:1], explain=True)[0]["adapters"]
    assert [v["adapter"] for v in votes if v["role"] == "boost"] == [boosted[0]["name"]]


def test_predict_typed_texts_output_csv_and_json(real_ws, tmp_path):
    text = "The team won the game on Sunday."
    doc = cli(
        "predict", "--workspace", real_ws, "--task", "topics", text, "--explain",
        "--output", tmp_path / "out.csv",
    )  # fmt: skip
    row = doc["rows"][0]
    assert row["text"] == text and row["label"] is None and doc["accuracy"] is None
    assert row["prompt"] == f"News: {text}\nTopic:"  # the task's template, rendered
    assert set(row["probabilities"]) == {"sports", "politics"}
    assert sum(row["probabilities"].values()) == pytest.approx(1.0)
    assert row["answer"] == max(row["probabilities"], key=row["probabilities"].get)
    with open(tmp_path / "out.csv", encoding="utf-8") as fh:
        line = next(csv.DictReader(fh))
    assert line["answer"] == row["answer"] and line["text"] == text
    assert float(line["p(sports)"]) == pytest.approx(row["probabilities"]["sports"])
    assert line["baseline answer"] == row["baseline"]["answer"]
    again = cli(
        "predict", "--workspace", real_ws, "--task", "topics", text, "--explain",
        "--output", tmp_path / "out.json",
    )  # fmt: skip
    assert json.loads((tmp_path / "out.json").read_text()) == again == doc


def test_predict_input_in_the_tasks_own_columns(real_ws, tmp_path):
    """A task whose files use their own column names (task.yaml's `columns`) reads a predict
    input file in those names too."""
    import yaml

    from core.config import parse_config

    ws = Workspace(copy_workspace(real_ws, "mapped"))
    cfg = ws.load_config()
    tasks = tmp_path / "tasks"
    shutil.copytree(cfg.resolve(cfg.data.root), tasks)
    meta = yaml.safe_load((tasks / "topics" / "task.yaml").read_text())
    (tasks / "topics" / "task.yaml").write_text(
        yaml.safe_dump({**meta, "columns": {"text": "tweet", "label": "gold"}})
    )
    for split in ("train", "val", "test"):
        path = tasks / "topics" / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text(
            "".join(json.dumps({"tweet": r["text"], "gold": r["label"]}) + "\n" for r in rows)
        )
    data = cfg.model_dump(mode="json", exclude={"base_dir"})
    data["data"]["root"] = str(tasks)
    ws.save_config(parse_config(data, base_dir=cfg.base_dir))
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"tweet": "The president spoke to the party.", "gold": "politics"}))
    doc = cli("predict", "--workspace", ws.root, "--task", "topics", "--input", mine)
    row = doc["rows"][0]
    assert row["text"] == "The president spoke to the party." and row["label"] == "politics"
    assert row["prompt"] == "News: The president spoke to the party.\nTopic:"


def _fails(*argv) -> str:
    """Run `python -m core.cli ARGV` as a user would; it must exit 2 with one error line."""
    out = subprocess.run(
        [sys.executable, "-m", "core.cli", *map(str, argv)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    return out.stderr


def test_clear_errors(real_ws, tmp_path):
    msg = _fails("predict", "--workspace", real_ws, "--task", "nope", "some text")
    assert "unknown task 'nope'" in msg and "topics" in msg
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "fine"}\n{"body": "no text here"}\n')
    msg = _fails("predict", "--workspace", real_ws, "--task", "topics", "--input", rows)
    assert f"{rows}, row 2, field 'text'" in msg and "missing" in msg
    (tmp_path / "bad.csv").write_text("text,label\nThe game,weather\n")
    msg = _fails("predict", "-w", real_ws, "--task", "topics", "--input", tmp_path / "bad.csv")
    assert "row 1, field 'label'" in msg and "'weather'" in msg
    (tmp_path / "other.csv").write_text("body\nThe game\n")
    msg = _fails("predict", "-w", real_ws, "--task", "topics", "--input", tmp_path / "other.csv")
    assert "no text column" in msg and "'body'" in msg
    bare = copy_workspace(real_ws, "untrained")
    (bare / "ensemble.json").unlink()
    shutil.rmtree(bare / "adapters")
    msg = _fails("predict", "--workspace", bare, "--task", "topics", "some text")
    assert "no ensemble.json" in msg and "train the group adapters first" in msg
    msg = _fails("predict", "-w", real_ws, "--task", "topics", "x", "--output", tmp_path / "o.txt")
    assert ".csv or .json" in msg


def test_the_api_refuses_rows_it_cannot_answer(real_ws):
    ens = Ensemble.load(real_ws)
    with pytest.raises(DataError, match="row 2, field 'label'"):
        ens.predict("topics", [{"text": "a game"}, {"text": "a vote", "label": "weather"}])
    with pytest.raises(GroupTuneError, match="unknown task"):
        ens.predict("nope", [{"text": "x"}])
