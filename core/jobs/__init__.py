"""Background jobs: each long step runs as a detached worker process, its state in SQLite.

A job is a command a user could type (`grouptune <argv>`); it is queued in `<workspace>/jobs.db`,
started when its dependencies are done and a slot is free, and writes progress, metrics and a
heartbeat to the database and its output to `<workspace>/logs/<id>-<step>.log`. Nothing is a
server: the dashboard, the CLI and the workers read and write the same file. Ray
(`get_backend("ray")`, extra `grouptune[ray]`) runs the same jobs as tasks on a cluster.

    from core.jobs import submit, wait
    a = submit(ws, "features", "gradients", ["gradients", "--workspace", str(ws)])
    b = submit(ws, "train g0", "train:group-0", [...], depends_on=[a])
    wait(ws, [a, b])

Steps must be resumable: resume/retry runs the same command again, and the step continues
from its own checkpoint. See `core.jobs.runner` for a job's life.
"""

from __future__ import annotations

import importlib

# Names load on first use (PEP 562): `python -m core.jobs.runner` imports this package first,
# and an eager import of the runner here would load it twice (once as __main__).
_EXPORTS = {
    "Backend": "backends",
    "LocalBackend": "backends",
    "get_backend": "scheduler",
    "JobCancelled": "runner",
    "cancel": "scheduler",
    "db_path": "scheduler",
    "dispatch": "scheduler",
    "open_store": "scheduler",
    "resume": "scheduler",
    "retry": "scheduler",
    "submit": "scheduler",
    "wait": "scheduler",
    "STATES": "database",
    "TERMINAL": "database",
    "JobNotFound": "database",
    "JobStateError": "database",
    "JobStore": "database",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'core.jobs' has no attribute {name!r}")
    return getattr(importlib.import_module(f"core.jobs.{_EXPORTS[name]}"), name)
