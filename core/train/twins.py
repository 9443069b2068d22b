"""Twins: an adapter whose run (tasks, rows, recipe, seed, base model) matches a finished one is copied instead of trained again (e.g. the baseline and the one group at m = 1)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from core.io import read_json, write_json
from core.train.run import Run, read_json_file, record_accounting, run_fingerprint


def run_digest(offsets: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for split in sorted(offsets):
        for a in offsets[split]:
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def find_twin(ws, run: Run) -> Path | None:
    """A finished adapter elsewhere in the workspace made from the same tasks with the same
    recipe: a group adapter that moved to another index after regrouping, or a subset adapter of
    `grouptune validate-estimate`. Training it again would give the same adapter."""
    want = sorted(t.name for t in run.tasks)
    current = json.loads(json.dumps(run.fingerprint))  # as it reads back from grouptune.json
    for path in sorted(ws.path("adapters").glob("*/grouptune.json")):
        if path.parent == run.out:
            continue
        try:
            rec = read_json(path)
        except (OSError, ValueError):
            continue  # a damaged folder is never a twin
        same = sorted(rec.get("tasks", [])) == want and rec.get("fingerprint") == current
        if same and rec.get("epochs") == run.cfg.training.epochs:
            return path.parent
    return None


def copy_twin(twin: Path, run: Run, ws) -> dict:
    """Copy a twin's adapter files into run.out; grouptune.json last (it marks completion)."""
    run.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.tmp-", dir=run.out))
    try:
        names = ("adapter_config.json", "adapter_model.safetensors", "metrics.jsonl")
        for fname in names:
            if (twin / fname).exists():
                shutil.copy2(twin / fname, tmp / fname)
        for fname in names:
            if (tmp / fname).exists():
                os.replace(tmp / fname, run.out / fname)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record = read_json_file(twin / "grouptune.json")
    record.update(name=run.name, copied_from=twin.name)
    write_json(run.out / "grouptune.json", record)
    record_accounting(ws, run.name, record["accounting"])  # what making this adapter cost
    print(
        f"{run.name}: same tasks and recipe as {twin.name}; copied, not retrained", file=sys.stderr
    )
    return record


def known_without_model(cfg, ws, name: str, task_names: list[str], offsets) -> dict | None:
    """The finished adapter, or a twin's copy, when the config alone shows it: the run's
    fingerprint from the model's skeleton (no weights loaded) must match exactly. Anything
    else goes the full way, which also refuses a foreign adapter. Saves a job that has
    nothing to do its model load (5-8 s, with 4-bit quantisation)."""
    from core.data.sources import select_tasks
    from core.models.loading import model_skeleton
    from core.train.freshness import adapter_status

    tasks = select_tasks(cfg, task_names)
    fingerprint = run_fingerprint(cfg, model_skeleton(cfg.model), tasks)
    if offsets is not None:
        fingerprint["data"]["offsets"] = run_digest(offsets)
    fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from grouptune.json
    path = ws.adapter_dir(name) / "grouptune.json"
    if path.exists():
        done = read_json_file(path)
        same = done.get("fingerprint") == fingerprint
        status = adapter_status(ws, cfg, name, task_names, fingerprint["data"]["tasks"])
        return done if same and status.startswith("fresh") else None
    run = Run(cfg, name, ws.adapter_dir(name), None, None, None, tasks, [], 0, fingerprint)
    twin = find_twin(ws, run)
    return copy_twin(twin, run, ws) if twin is not None else None
