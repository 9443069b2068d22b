"""The Try it page's view, without torch: a request (rows typed or uploaded for a task) is
written to <ws>/tryit/<id>/input.jsonl, answered by a `grouptune predict --explain` job that
writes <id>/predictions.json, and read back from there. The newest request is what the page
shows, so a refresh or a restart of the dashboard loses nothing.

Predict jobs run without waiting for a job slot ({"slots": 0}): a few forward passes, which a
person is waiting for, must not queue behind a training job that holds the one slot.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd

from core.io import read_json, write_json, write_text
from core.stages import command
from core.views.jobs import read_jobs, submit_step
from core.workspace import Workspace

FOLDER = "tryit"
KEEP = 20  # requests kept on disk; older ones are deleted when a new one is made
MAX_ROWS = 50  # rows one request may hold: this page is for trying, `grouptune predict` for files


def predict_argv(folder: Path, task: str) -> list[str]:
    """The command that answers a request (the page's CLI twin)."""
    rows, out = str(folder / "input.jsonl"), str(folder / "predictions.json")
    return command("predict", task=task, input=rows, explain=True, output=out)


def new_request(ws: Workspace, task: str, rows: list[dict]) -> Path:
    """Write the rows of a request (and its task) to a new folder; returns the folder."""
    from core.errors import GroupTuneError

    if not rows or len(rows) > MAX_ROWS:
        raise GroupTuneError(f"give 1 to {MAX_ROWS} rows (got {len(rows)})")
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"
    folder = ws.path(FOLDER, f"r{stamp}")
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_text(folder / "input.jsonl", lines)
    write_json(folder / "request.json", {"task": task, "rows": len(rows), "job": None})
    _prune(ws)
    return folder


def submit_request(ws: Workspace, task: str, rows: list[dict]) -> int:
    """A new request answered by a background `grouptune predict` job; returns the job id."""
    folder = new_request(ws, task, rows)
    job = submit_step(ws, predict_argv(folder, task), resources={"slots": 0})
    write_json(folder / "request.json", {"task": task, "rows": len(rows), "job": job})
    return job


def _prune(ws: Workspace) -> None:
    for old in _requests(ws)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)


def _requests(ws: Workspace) -> list[Path]:
    root = ws.path(FOLDER)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "request.json").is_file())


def latest_request(ws: Workspace) -> dict | None:
    """The newest request: {"folder", "task", "rows", "job" (its record, or None), "result"
    (the predictions document once written, else None)}; None when there is none."""
    folders = _requests(ws)
    if not folders:
        return None
    folder = folders[-1]
    request = read_json(folder / "request.json")
    jobs = {j["id"]: j for j in read_jobs(ws)}
    out = folder / "predictions.json"
    return {
        "folder": folder,
        "task": request["task"],
        "rows": request["rows"],
        "job": jobs.get(request.get("job")),
        "result": read_json(out) if out.is_file() else None,
    }


def probabilities_frame(row: dict, labels: dict[str, str]) -> pd.DataFrame:
    """label, answer word, probability: the ensemble's answer distribution for one row."""
    return pd.DataFrame(
        [
            {"label": lab, "answer word": labels.get(lab, ""), "probability": p}
            for lab, p in row["probabilities"].items()
        ]
    )


def votes_frame(row: dict) -> pd.DataFrame:
    """adapter, role, weight, answer, p(answer): each group adapter's part in one row's answer
    (a boosting round's "weight" is its step, its answer the one its shift favours)."""
    lines = [
        {
            "adapter": v["adapter"],
            "role": v["role"],
            "weight": v["weight"],
            "answer": v["answer"],
            "p(answer)": (v.get("probabilities") or {}).get(v["answer"]),
        }
        for v in row.get("adapters") or []
    ]
    return pd.DataFrame(lines, columns=["adapter", "role", "weight", "answer", "p(answer)"])
