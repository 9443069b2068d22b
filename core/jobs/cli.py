"""`grouptune jobs ...`: list, inspect, stop and restart background jobs from a terminal.

Every command takes `--workspace DIR` (the database is DIR/jobs.db) and `--json`, which prints
one machine-readable JSON document on stdout (errors too: {"error": "..."}, exit code 1).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from core.errors import GroupTuneError
from core.jobs.database import STATES, TERMINAL, JobStore
from core.jobs.programs import command_line
from core.jobs.scheduler import cancel, open_store, resume, retry

jobs_app = typer.Typer(
    help="Background jobs: list, show, logs, cancel, resume, retry.", no_args_is_help=True
)

WorkspaceOpt = typer.Option(
    Path("."), "--workspace", "-w", help="experiment folder (holds jobs.db and logs/)"
)
JsonOpt = typer.Option(False, "--json", help="machine-readable JSON on stdout")


def _store(workspace: Path) -> JobStore:
    db = workspace / "jobs.db"
    if not db.exists():
        raise GroupTuneError(f"no jobs in {workspace.resolve()} (no jobs.db there)")
    return open_store(db)


def _fail(message: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": message}))
    else:
        typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(1)


def _run(as_json: bool, fn):
    """Call fn(); show a GroupTune error as a plain message (or JSON), not a traceback."""
    try:
        return fn()
    except (GroupTuneError, ValueError) as exc:
        _fail(str(exc), as_json)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _duration(job: dict) -> str:
    if not job["started"]:
        return "-"
    seconds = int((job["finished"] or time.time()) - job["started"])
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _progress(job: dict) -> str:
    if job["progress"] is None:
        return "-"
    eta = f" eta {int(job['eta_s'])}s" if job["eta_s"] is not None else ""
    return f"{100 * job['progress']:.0f}%{eta}"


@jobs_app.command("list")
def list_jobs(
    workspace: Path = WorkspaceOpt,
    state: str = typer.Option(None, "--state", help="only jobs in this state"),
    as_json: bool = JsonOpt,
) -> None:
    """List jobs, oldest first: state, step, progress, run time and what they are doing."""
    if state is not None and state not in STATES:
        _fail(f"--state must be one of {', '.join(STATES)}, got {state!r}", as_json)
    if not (workspace / "jobs.db").exists():
        jobs = []  # no jobs yet is an answer, not an error
    else:
        jobs = _run(as_json, lambda: open_store(workspace / "jobs.db").list(state))
    if as_json:
        print(json.dumps(jobs))
        return
    if not jobs:
        typer.echo("no jobs")
        return
    typer.echo(f"{'ID':>4}  {'STATE':<9}  {'STEP':<18}  {'PROGRESS':<14}  {'TIME':>8}  NOTE")
    for job in jobs:
        note = job["error"] if job["state"] == "failed" else job["message"] or job["name"]
        typer.echo(
            f"{job['id']:>4}  {job['state']:<9}  {job['step'][:18]:<18}  {_progress(job):<14}  "
            f"{_duration(job):>8}  {(note or '')[:80]}"
        )


@jobs_app.command("show")
def show(job_id: int, workspace: Path = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Everything about one job, with its latest metrics record."""

    def load():
        store = _store(workspace)
        job = store.get(job_id)
        metrics = store.metrics(job_id)
        return {
            **job,
            "metrics_count": len(metrics),
            "last_metrics": metrics[-1] if metrics else None,
            "timing": store.timing(job_id),
        }

    job = _run(as_json, load)
    if as_json:
        print(json.dumps(job))
        return
    command = command_line(job)
    rows = [
        ("job", f"{job['id']}  {job['name']}  ({job['step']})"),
        ("state", job["state"] + ("  (cancel requested)" if job["cancel_requested"] else "")),
        ("command", command),
        ("depends on", ", ".join(map(str, job["depends_on"])) or "-"),
        ("backend", f"{job['backend']}  resources {job['resources'] or '-'}"),
        ("created", _when(job["created"])),
        ("started", _when(job["started"])),
        ("finished", _when(job["finished"])),
        ("run time", _duration(job)),
        ("progress", _progress(job)),
        ("message", job["message"] or "-"),
        ("error", job["error"] or "-"),
        ("exit code", "-" if job["exit_code"] is None else str(job["exit_code"])),
        ("attempts", str(job["attempts"])),
        ("worker", f"pid {job['pid']} on {job['host']}" if job["pid"] else "-"),
        ("log", job["log_path"]),
        ("metrics", f"{job['metrics_count']} records, last {job['last_metrics'] or '-'}"),
        ("time went", _time_went(job["timing"])),
    ]
    for key, value in rows:
        typer.echo(f"{key:>11}: {value}")


def _time_went(t: dict | None) -> str:
    """The worker's timing record in words: start-up before the step, model loads, compute."""
    if not t:
        return "-"
    step = t["step_finished"] - t["step_started"]
    start = t["step_started"] - t["process_started"] if t.get("process_started") else None
    parts = [f"{start:.1f} s process start" if start is not None else None]
    parts += [f"{step:.1f} s step: {t.get('compute_s', 0):.1f} s compute"]
    parts += [f"{t['model_load_s']:.1f} s model load" if t.get("model_load_s") else None]
    return ", ".join(p for p in parts if p)


@jobs_app.command("logs")
def logs(
    job_id: int,
    workspace: Path = WorkspaceOpt,
    tail: int = typer.Option(None, "--tail", "-n", help="only the last N lines"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until it ends"),
    as_json: bool = JsonOpt,
) -> None:
    """Print a job's log (stdout and stderr of every attempt)."""
    store = _run(as_json, lambda: _store(workspace))
    job = _run(as_json, lambda: store.get(job_id))
    path = Path(job["log_path"])
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    lines = text.splitlines()
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    if as_json:
        print(json.dumps({"id": job_id, "log_path": str(path), "lines": lines}))
        return
    for line in lines:
        typer.echo(line)
    offset = len(text.encode("utf-8"))
    while follow and store.get(job_id)["state"] not in TERMINAL:
        time.sleep(0.5)
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", "replace"))
            sys.stdout.flush()


def _print_job(job: dict, as_json: bool, verb: str) -> None:
    if as_json:
        print(json.dumps(job))
    else:
        typer.echo(f"job {job['id']} ({job['step']}) {verb}: now {job['state']}")


@jobs_app.command("cancel")
def cancel_cmd(
    job_id: int,
    workspace: Path = WorkspaceOpt,
    grace: float = typer.Option(5.0, "--grace", help="seconds to wait before SIGTERM, SIGKILL"),
    no_wait: bool = typer.Option(False, "--no-wait", help="only ask the job to stop"),
    as_json: bool = JsonOpt,
) -> None:
    """Stop a job: queued ones at once, running ones gracefully, then by signal."""
    _run(as_json, lambda: _store(workspace))
    job = _run(as_json, lambda: cancel(workspace / "jobs.db", job_id, grace, not no_wait))
    _print_job(job, as_json, "cancel requested" if no_wait else "cancelled")


@jobs_app.command("resume")
def resume_cmd(job_id: int, workspace: Path = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Queue a failed or cancelled job again; it continues from its checkpoint."""
    _run(as_json, lambda: _store(workspace))
    _print_job(_run(as_json, lambda: resume(workspace / "jobs.db", job_id)), as_json, "resumed")


@jobs_app.command("retry")
def retry_cmd(job_id: int, workspace: Path = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Run a failed or cancelled job again (same command, attempt + 1)."""
    _run(as_json, lambda: _store(workspace))
    _print_job(_run(as_json, lambda: retry(workspace / "jobs.db", job_id)), as_json, "retried")
