"""The Training page's view: loss and validation curves, and each adapter's state."""

from __future__ import annotations

import pandas as pd

from core.config import ExperimentConfig
from core.data.tasks import content_hashes
from core.views.jobs import ACTIVE, latest_jobs
from core.views.stages import adapter_state, expected_adapters
from core.workspace import Workspace


def read_training_metrics(ws: Workspace, name: str):
    """adapters/<name>/metrics.jsonl as two tables: steps (step, epoch, task, loss, lr,
    grad_norm) and validation (epoch, step, task, accuracy, nll, f1; task "mean" included)."""
    import json

    path = ws.path("adapters", name, "metrics.jsonl")
    steps, val = [], []
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if rec.get("kind") == "step":
            keys = ("step", "epoch", "task", "loss", "lr", "grad_norm")
            steps.append({k: rec.get(k) for k in keys})
        elif rec.get("kind") == "val":
            for task, m in (rec.get("val") or {}).items():
                val.append({"epoch": rec["epoch"], "step": rec["step"], "task": task, **m})
            val.append(
                {
                    "epoch": rec["epoch"],
                    "step": rec["step"],
                    "task": "mean",
                    "accuracy": rec.get("mean_accuracy"),
                    "nll": rec.get("mean_nll"),
                }
            )
    step_cols = ["step", "epoch", "task", "loss", "lr", "grad_norm"]
    return pd.DataFrame(steps, columns=step_cols), pd.DataFrame(val)


def adapter_jobs(jobs: list[dict]) -> dict[str, dict]:
    """Adapter name -> its newest training job."""
    out = {}
    for (stage, item), job in latest_jobs(jobs).items():
        if stage == "training":
            out[item] = job
    return out


def adapters_frame(ws: Workspace, cfg: ExperimentConfig, tasks=None, jobs=()):
    """Per expected adapter: tasks, state, best epoch, best mean val accuracy, its job."""
    latest = adapter_jobs(list(jobs))
    hashes = content_hashes(tasks) if tasks is not None else None
    rows = []
    for name, names in expected_adapters(ws, cfg).items():
        row = adapter_state(ws, cfg, name, names, hashes)
        job = latest.get(name) or latest.get("*")
        if job is not None and job["state"] in ACTIVE:
            row = {**row, "state": job["state"]}
        record = ws.read("adapters", name, "grouptune.json") or {}
        best = (record.get("val_metrics") or {}).get("mean") or {}
        rows.append(
            {
                "adapter": name,
                "tasks": ", ".join(names),
                "state": row["state"],
                "detail": row["detail"],
                "best epoch": record.get("best_epoch"),
                "val accuracy": best.get("accuracy"),
                "job": f"{job['id']} {job['state']}" if job else "",
            }
        )
    return pd.DataFrame(rows)
