"""Every setting GroupTune reads from the environment, in one place (README: "Settings").

Each is read when asked, never at import: the job runner sets some for the process a job
becomes, a Ray task passes them on to its node, and tests change them with monkeypatch. A
malformed value is an error that names the variable.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import GroupTuneError

SETTINGS = {
    "GROUPTUNE_CACHE": "models, tokenizers and caches (default ~/.cache/grouptune)",
    "GROUPTUNE_WORKSPACES": "where the dashboard makes new experiments (default ./workspaces)",
    "GROUPTUNE_WORKSPACE": "the workspace the dashboard opens first",
    "GROUPTUNE_MAX_JOBS": "background jobs run side by side on this machine (default 1)",
    "GROUPTUNE_THREADS": "torch threads of a process (default: the CPUs, shared among jobs)",
    "GROUPTUNE_PROGRESS": "0: no progress bars (jobs and tests)",
    "GROUPTUNE_CHECKPOINT_S": "seconds between mid-epoch training checkpoints (default 600)",
    "GROUPTUNE_QUANTIZED_CACHE": "0: load 4-bit weights afresh instead of from the cache",
    "GROUPTUNE_HEARTBEAT_S": "seconds between a job worker's heartbeats (default 2)",
    "GROUPTUNE_REMOTE_GRACE_S": "seconds a Ray job may go unheard before it counts as lost (60)",
    "GROUPTUNE_REUSE_WORKERS": "set by the scheduler for a worker that runs a chain of jobs",
    "GROUPTUNE_JOB_ID": "set by the job runner: the job this process is",
    "GROUPTUNE_JOB_DB": "set by the job runner: the job database of that job",
}


def text(name: str) -> str | None:
    """The variable's value, or None when unset or empty."""
    if name not in SETTINGS:
        raise KeyError(f"{name} is not a GroupTune setting (core.settings.SETTINGS)")
    return os.environ.get(name, "").strip() or None


def number(name: str, default: float, minimum: float = 0.0) -> float:
    raw = text(name)
    if raw is None:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= minimum:  # NaN included
        raise GroupTuneError(f"{name}={raw!r}: expected a number >= {minimum:g}")
    return value


def integer(name: str, default: int, minimum: int = 0) -> int:
    value = number(name, default, minimum)
    if value != int(value):
        raise GroupTuneError(f"{name}={text(name)!r}: expected a whole number")
    return int(value)


def switched_off(name: str) -> bool:
    """True when the variable is "0" (GROUPTUNE_PROGRESS, GROUPTUNE_QUANTIZED_CACHE)."""
    return text(name) == "0"


def cache_dir() -> Path:
    """The GroupTune cache: $GROUPTUNE_CACHE, else ~/.cache/grouptune."""
    env = text("GROUPTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "grouptune"
