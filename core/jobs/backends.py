"""Where workers run: detached local processes (the default) or Ray tasks (`ray_backend`);
`core.jobs.scheduler.get_backend` hands out one shared instance per kind and address.

The scheduler decides *which* job starts; a backend only starts a worker for it. Jobs record
their backend at submit, and each dispatcher only starts the jobs of its own backend.
"""

from __future__ import annotations

import subprocess
from typing import Protocol

from core import settings
from core.jobs.launch import child_env, job_cwd, runner_command


class Backend(Protocol):
    name: str

    def default_limit(self) -> int | None:
        """How many of this backend's jobs may run at once when no limit is given."""

    def start(self, db: str, job: dict, extra_env: dict[str, str]) -> int | None:
        """Start a worker for a claimed job; return its pid when known at once."""

    def gpus(self) -> float:
        """How many GPUs the backend's jobs can be given (0: none)."""


class LocalBackend:
    """Each job in its own detached worker process on this machine.

    Workers start in a new session with stdin/stdout on /dev/null and no inherited file
    descriptors, so they outlive the process that submitted them (a closed terminal, a
    restarted dashboard) and a signal to the session reaches the step's own subprocesses.
    """

    name = "local"

    def default_limit(self) -> int:
        # One at a time: two training jobs on 2 CPU cores only slow each other down.
        return settings.integer("GROUPTUNE_MAX_JOBS", 1)

    def gpus(self) -> float:
        try:  # the driver may load torch; jobs see every GPU of this machine
            import torch
        except ImportError:
            return 0
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def start(self, db: str, job: dict, extra_env: dict[str, str]) -> int:
        proc = subprocess.Popen(
            runner_command(db, job["id"]),
            cwd=job_cwd(job),
            env=child_env(extra_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
        return proc.pid
