"""How a job's worker process is started: its command line, environment and folder.

Both backends start workers the same way (the local one as a detached process, the Ray one
inside a Ray task); the worker itself is `core.jobs.runner`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import core

PROJECT_ROOT = Path(core.__file__).resolve().parent.parent


def runner_command(db: str | os.PathLike, job_id: int, dispatch: bool = True) -> list[str]:
    """The command line that runs job `job_id` of database `db` in a fresh worker."""
    cmd = [sys.executable, "-m", "core.jobs.runner", str(Path(db).resolve()), str(int(job_id))]
    return cmd if dispatch else [*cmd, "--no-dispatch"]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a worker, with GroupTune importable from any directory."""
    env = dict(os.environ)
    paths = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra or {})
    return env


def job_cwd(job: dict) -> Path:
    """Where the job runs: the directory it was submitted from, else the workspace."""
    cwd = Path(job.get("cwd") or "")
    return cwd if job.get("cwd") and cwd.is_dir() else Path(job["log_path"]).parent.parent
