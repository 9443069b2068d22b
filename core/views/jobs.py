"""Background jobs as the dashboard shows them: states, targets, logs, submitting a step."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from core.config import ExperimentConfig
from core.stages import command
from core.views.workspaces import ROOT, resolved_config
from core.workspace import Workspace

ACTIVE = ("running", "queued")


def read_jobs(ws: Workspace) -> list[dict]:
    """Every job of the workspace, oldest first ([] when it never had one; creates nothing)."""
    if not ws.path("jobs.db").is_file():
        return []
    from core.jobs import open_store

    return open_store(ws.root).list()


def job_counts(jobs: list[dict]) -> dict[str, int]:
    """How many jobs are in each state (every state present, 0 when none)."""
    from core.jobs import STATES

    counts = dict.fromkeys(STATES, 0)
    for job in jobs:
        counts[job["state"]] += 1
    return counts


def _option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]


def job_targets(job: dict) -> list[tuple[str, str]]:
    """The (stage, item) pairs a job works on, from its argv ("*" = every item of the stage)."""
    argv = job.get("argv") or []
    verb = argv[0] if argv else ""
    if verb == "gradients":
        return [("gradients", t) for t in _option(argv, "--task")] or [("gradients", "*")]
    if verb == "train":
        which = (_option(argv, "--adapter") or ["all"])[-1]
        if which in ("all", "groups"):
            return [("training", "*")]
        return [("training", which)]
    if verb == "evaluate":
        items = ["zero_shot"] if "--zero-shot" in argv else ["*"]
        return [("evaluation", i) for i in items]
    if verb == "group":
        return [("grouping", "chosen")]
    if verb == "boost":
        return [("boosting", f"boost-{r}") for r in _option(argv, "--round")] or [("boosting", "*")]
    if verb in ("affinity", "report"):
        return [(verb, verb)]
    if verb == "run":
        return [("run", "run")]
    if verb == "predict":
        return [("predict", t) for t in _option(argv, "--task")]
    if verb == "validate-estimate":
        return [("validation", "validation")]
    if verb == "mix":  # a suggestion, or --train: the adapter trained with the weights
        return [("mixing", (_option(argv, "--group") or ["all"])[-1])]
    if verb == "train-subset":  # one real fine-tune of validate-estimate (one seed)
        seed = _option(argv, "--seed")
        item = "+".join(sorted(_option(argv, "--task")))
        return [("validation", item + (f" (seed {seed[0]})" if seed else ""))]
    return []


def latest_jobs(jobs: list[dict]) -> dict[tuple[str, str], dict]:
    """(stage, item) -> the newest job working on it (jobs are given oldest first)."""
    out: dict[tuple[str, str], dict] = {}
    for job in jobs:
        for target in job_targets(job):
            out[target] = job
    return out


def active_items(jobs: list[dict], stage: str) -> set[str]:
    """Items of `stage` a running or queued job works on ("*" = all of them)."""
    return {i for (s, i), j in latest_jobs(jobs).items() if s == stage and j["state"] in ACTIVE}


def submit_step(
    ws: Workspace, argv: list[str], depends_on=(), step: str | None = None, **kw
) -> int:
    """Queue `grouptune <argv> --workspace <ws>` as a background job; return its id."""
    from core.jobs import submit

    argv = [*argv, "--workspace", str(ws.root)]
    step = step or ":".join(
        [argv[0], *_option(argv, "--task"), *_option(argv, "--adapter"), *_option(argv, "--m")]
    )
    return submit(ws.root, step, step, argv, depends_on=list(depends_on), cwd=ROOT, **kw)


def submit_run(ws: Workspace, cfg: ExperimentConfig) -> int:
    """The `grouptune run` driver job: it only waits on the jobs it submits (slots 0)."""
    config = resolved_config(ws, cfg)
    argv = command("run", config, workspace=ws.root)
    from core.jobs import submit

    return submit(ws.root, "run", "run", argv, resources={"slots": 0}, cwd=ROOT)


def cli_text(argv: list[str], ws: Workspace | None = None) -> str:
    """The terminal command a job runs."""
    words = ["grouptune", *argv] + (["--workspace", str(ws.root)] if ws is not None else [])
    return " ".join(w if w and " " not in w else repr(w) for w in words)


def tail_log(path: str | os.PathLike | None, lines: int = 60) -> str:
    """The last `lines` lines of a log file ('' when there is none yet)."""
    if not path or not Path(path).is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, os.path.getsize(path) - 200 * lines))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def jobs_frame(jobs: list[dict]):
    """A table of jobs, newest first: id, step, state, progress (0-1), ETA, runtime, note."""
    rows = []
    now = time.time()
    for job in reversed(jobs):
        started, finished = job.get("started"), job.get("finished")
        note = job["error"] if job["state"] == "failed" else job.get("message")
        rows.append(
            {
                "id": job["id"],
                "step": job["step"],
                "state": job["state"],
                "progress": job.get("progress"),
                "eta_s": job.get("eta_s"),
                "runtime_s": (finished or now) - started if started else None,
                "attempts": job.get("attempts"),
                "note": note or "",
            }
        )
    cols = ["id", "step", "state", "progress", "eta_s", "runtime_s", "attempts", "note"]
    return pd.DataFrame(rows, columns=cols)
