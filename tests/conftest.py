"""Shared test helpers: tiny real task folders written in the sample format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("GROUPTUNE_PROGRESS", "0")  # no progress bars in test output

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"


def write_task(
    root: Path,
    name: str,
    rows: dict[str, list[dict]],
    labels: dict[str, str],
    template: str = "Review: {text}\nSentiment:",
) -> Path:
    """Write a task folder (task.yaml + split files) and return it."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": name,
        "description": f"test task {name}",
        "template": template,
        "labels": labels,
    }
    (folder / "task.yaml").write_text(yaml.safe_dump(meta), encoding="utf-8")
    for split, split_rows in rows.items():
        lines = "".join(json.dumps(r) + "\n" for r in split_rows)
        (folder / f"{split}.jsonl").write_text(lines, encoding="utf-8")
    return folder


def sentiment_rows(n: int, offset: int = 0) -> list[dict]:
    good = ["great", "lovely", "excellent", "wonderful", "good"]
    bad = ["awful", "terrible", "bad", "horrible", "poor"]
    rows = []
    for i in range(n):
        positive = (i + offset) % 2 == 0
        word = (good if positive else bad)[(i + offset) % 5]
        rows.append(
            {
                "text": f"The food was {word} and item {i + offset}.",
                "label": "positive" if positive else "negative",
            }
        )
    return rows


@pytest.fixture
def tiny_task_root(tmp_path):
    """Two small binary tasks in the sample format."""
    labels = {"negative": " negative", "positive": " positive"}
    for name, off in (("alpha", 0), ("beta", 100)):
        write_task(
            tmp_path / "tasks",
            name,
            {
                "train": sentiment_rows(12, off),
                "val": sentiment_rows(6, off + 50),
                "test": sentiment_rows(6, off + 80),
            },
            labels,
        )
    return tmp_path / "tasks"


def topic_rows(n, offset=0):
    topics = [("sports", "The team won the game"), ("politics", "The president spoke to the party")]
    return [
        {
            "text": f"{topics[(i + offset) % 2][1]} number {i + offset}.",
            "label": topics[(i + offset) % 2][0],
        }
        for i in range(n)
    ]


def write_tiny_experiment(root: Path, **overrides) -> Path:
    """Three tiny real tasks and a tiny-llama config that runs the whole pipeline in ~1 min."""
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
        {"train": topic_rows(16), "val": topic_rows(8, 50), "test": topic_rows(8, 90)},
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
    for section, values in overrides.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- a user's own files, as people already have them (issue 17) ------------------------------
def write_tweets_csv(path: Path, n: int = 32) -> Path:
    """A CSV with columns id,tweet,author,date: the text is `tweet`, the label `author`."""
    lines = ["id,tweet,author,date"]
    for i in range(n):
        author, mood = ("ann", "great") if i % 2 else ("bob", "awful")
        lines.append(
            f'{1000 + i},"The food was {mood}, tweet {i}",{author},2024-03-{i % 28 + 1:02d}'
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_sentences_jsonl(path: Path, n: int = 32) -> Path:
    """A JSONL of {"sentence": ..., "gold": 0 or 1}: integer labels under another name."""
    rows = [
        {"sentence": f"The movie was {'good' if i % 2 else 'bad'} scene {i}.", "gold": i % 2}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def real_ws(tmp_path_factory) -> Path:
    """A workspace made by the real engine: every pipeline step run through the CLI once per
    test session (tiny experiment, m = 2, one boosting round). Shared read-only: a test that
    changes it works on `dashboard.copy_workspace(real_ws, name)`."""
    from dashboard import cli

    root = tmp_path_factory.mktemp("dashboard")
    ws = root / "ws"
    cli("init", "--config", write_tiny_experiment(root), "--workspace", ws)
    cli("evaluate", "--workspace", ws, "--zero-shot")
    for step in (["gradients"], ["affinity"], ["group", "--m", "2"], ["train"], ["boost"]):
        cli(*step, "--workspace", ws)
    cli("evaluate", "--workspace", ws)
    cli("report", "--workspace", ws)
    return ws


# --- the two-task training experiment (alpha, beta) -------------------------------------
GOOD = ["good", "great", "best", "better", "love"]
BAD = ["bad", "worse", "worst", "hate", "never"]
LABELS = {"negative": " negative", "positive": " positive"}


def rows(n: int, offset: int = 0, only: str | None = None) -> list[dict]:
    out = []
    for i in range(n):
        positive = (i + offset) % 2 == 0 if only is None else only == "positive"
        word = (GOOD if positive else BAD)[(i // 2 + offset) % 5]
        label = "positive" if positive else "negative"
        out.append({"text": f"item {i + offset} was {word}", "label": label})
    return out


def make_tasks(root, n_train: int = 16) -> None:
    for name, off in (("alpha", 0), ("beta", 7)):
        splits = {"train": rows(n_train, off), "val": rows(6, off + 50), "test": rows(6, off + 80)}
        write_task(root / "tasks", name, splits, LABELS, template="Review: {text}")


def make_cfg(root, model_name="tiny-gpt2", quantization="none", **sections):
    data = {
        "model": {"name": model_name, "quantization": quantization, "threads": 1},
        "tasks": ["alpha", "beta"],
        "data": {"root": "tasks"},
        "training": {"epochs": 2, "lr": 1e-2, "batch_size": 4},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    from core.config import parse_config

    return parse_config(data, base_dir=root)
