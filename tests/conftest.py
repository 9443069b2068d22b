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
