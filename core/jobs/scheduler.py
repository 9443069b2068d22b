"""Which job runs when: submit, dispatch, cancel, resume/retry and wait.

`dispatch` starts queued jobs whose dependencies are done while fewer than the limit are
running (default 1; env GROUPTUNE_MAX_JOBS or `max_jobs`). It is called by `submit`, by every
worker when it ends, and by any reader that notices a dead worker, so no long-lived server is
needed. Each start is claimed in one SQLite write transaction (the database's write lock is the
dispatch lock), so two dispatchers never start the same job or exceed the limit between them.
Queued jobs whose dependency failed or was cancelled fail with an error saying which.

`db` may be the database file or the workspace folder holding `jobs.db`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from core.jobs.backends import Backend, LocalBackend
from core.jobs.database import HOST, TERMINAL, JobStore, pid_alive

REUSE_WORKERS_ENV = "GROUPTUNE_REUSE_WORKERS"  # set for workers that run a chain of jobs


def db_path(db: str | os.PathLike) -> Path:
    """The database file for `db`: the path itself, or `<db>/jobs.db` for a folder."""
    path = Path(db).expanduser()
    return path / "jobs.db" if path.is_dir() or not path.suffix else path


def open_store(db: str | os.PathLike) -> JobStore:
    """A store whose reads, when they reap a dead worker, also start what can now run."""
    path = db_path(db)
    return JobStore(path, on_reap=lambda _ids: dispatch(path))


_BACKENDS: dict[tuple, Backend] = {}


def get_backend(kind: str = "local", address: str | None = None, **ray_init) -> Backend:
    """The backend called `kind` ("local" or "ray"), one shared instance per address.

    For Ray, `address` is a cluster ("ray://host:10001", "auto"); None starts a small local
    instance. Extra keyword arguments go to `RayBackend` (e.g. num_cpus for a local instance).
    """
    if kind == "local":
        return _BACKENDS.setdefault(("local",), LocalBackend())
    if kind == "ray":
        key = ("ray", address)
        if key not in _BACKENDS or _BACKENDS[key].closed:
            from core.jobs.ray_backend import RayBackend

            _BACKENDS[key] = RayBackend(address=address, dispatch=dispatch, **ray_init)
        return _BACKENDS[key]
    raise ValueError(f"backend must be 'local' or 'ray', got {kind!r}")


def _backend(backend: str | Backend | None) -> Backend:
    if backend is None or isinstance(backend, str):
        return get_backend(backend or "local")
    return backend


def dispatch(
    db: str | os.PathLike,
    max_jobs: int | None = None,
    backend: str | Backend | None = None,
    reuse_workers: bool = False,
) -> list[int]:
    """Start every queued job of `backend` that may run now; return the ids started.

    With `reuse_workers` (local backend) each worker goes on to run the next ready jobs
    itself (core.jobs.runner), and so do the workers it starts.
    """
    path = str(db_path(db))
    backend = _backend(backend)
    limit = max_jobs if max_jobs is not None else backend.default_limit()
    # the worker dispatches the next jobs when it ends: it must use the same limit
    extra_env = {"GROUPTUNE_MAX_JOBS": str(max_jobs)} if max_jobs is not None else {}
    if reuse_workers:
        extra_env[REUSE_WORKERS_ENV] = "1"
    store = JobStore(path)
    claimer = f"{HOST}:{os.getpid()}"
    started = []
    while (job := store.claim_next(backend.name, limit, claimer)) is not None:
        try:
            pid = backend.start(path, job, extra_env)
        except Exception as exc:
            store.mark_failed(job["id"], f"could not start a worker: {exc!r}")
            continue
        if pid is not None:
            store.set_pid(job["id"], pid)
        started.append(job["id"])
    return started


def submit(
    db: str | os.PathLike,
    name: str,
    step: str,
    argv: Iterable[str],
    *,
    backend: str | Backend | None = None,
    max_jobs: int | None = None,
    reuse_workers: bool = False,
    **job,
) -> int:
    """Queue `<program> <argv...>` as a job, start what can run, return the job id.

    `job`: JobStore.submit's program (default `grouptune`), depends_on (ids of jobs that must be done first),
    resources ({"cpus": n, "gpus": n, "slots": 0 for drivers}) and cwd (where relative paths
    in argv resolve; default: here). `reuse_workers`: see `dispatch`.
    """
    backend = _backend(backend)
    store = JobStore(db_path(db))
    job_id = store.submit(name, step, argv, backend=backend.name, **job)
    dispatch(store.path, max_jobs, backend, reuse_workers)
    return job_id


def resume(
    db: str | os.PathLike,
    job_id: int,
    max_jobs: int | None = None,
    backend: str | Backend | None = None,
) -> dict:
    """Queue a failed or cancelled job again with the same argv and start what can run.

    The step continues from its own checkpoint (steps are written to be resumable); jobs that
    never started because this one failed are queued again too. A job of another backend than
    the local one is started by the process driving that backend unless `backend` is given.
    Returns the job.
    """
    store = open_store(db)
    store.requeue(job_id)
    if backend is not None:
        dispatch(store.path, max_jobs, backend)
    elif store.peek(job_id)["backend"] == "local":
        dispatch(store.path, max_jobs)
    # else: the process driving that backend (e.g. a RayBackend's watcher) picks it up
    return store.get(job_id)


def retry(
    db: str | os.PathLike,
    job_id: int,
    max_jobs: int | None = None,
    backend: str | Backend | None = None,
) -> dict:
    """Run a failed or cancelled job again: the same operation as `resume`.

    Both re-run the job's command; whether work is redone or continued is the step's choice
    (GroupTune's steps continue from their checkpoints). The two names match the dashboard.
    """
    return resume(db, job_id, max_jobs, backend)


def cancel(db: str | os.PathLike, job_id: int, grace_s: float = 5.0, wait: bool = True) -> dict:
    """Stop a job; return it.

    A queued job is cancelled at once. A running one is asked to stop: its worker interrupts
    the step at the next heartbeat (a graceful stop: the step may save a checkpoint). With
    `wait`, if it has not stopped within `grace_s` it gets SIGTERM, and `grace_s` later
    SIGKILL, and is then marked cancelled here. Without `wait` this returns after asking.
    """
    store = open_store(db)
    if store.request_cancel(job_id) != "running" or not wait:
        return store.get(job_id)
    if _await_terminal(store, job_id, grace_s + store.heartbeat_s):
        return store.get(job_id)
    job = store.peek(job_id)
    pid = job["pid"] if job["host"] == HOST else None
    if pid:  # a worker on another host (Ray) can only be asked, not signalled
        _signal(pid, signal.SIGTERM)
        if _await_terminal(store, job_id, grace_s, pid):
            return store.get(job_id)
        _signal(pid, signal.SIGKILL)
    killed = store.mark_cancelled(job_id, f"killed: did not stop within {grace_s:g} s of asking")
    if killed and job["backend"] == "local":
        dispatch(store.path)
    return store.get(job_id)


def _await_terminal(store: JobStore, job_id: int, timeout: float, pid: int | None = None) -> bool:
    """Poll until the job is terminal (True) or `timeout` passes or `pid` dies (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.peek(job_id)["state"] in TERMINAL:
            return True
        if pid is not None and not pid_alive(pid):
            return store.peek(job_id)["state"] in TERMINAL
        time.sleep(0.05)
    return store.peek(job_id)["state"] in TERMINAL


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        # a local worker leads its own session: signal the group so the step's children stop too
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait(
    db: str | os.PathLike,
    ids: Iterable[int],
    timeout: float | None = None,
    poll_s: float = 0.1,
) -> dict[int, dict]:
    """Poll until every job in `ids` is done, failed or cancelled; return them by id.

    Raises TimeoutError (saying what is still pending) after `timeout` seconds.
    """
    store = open_store(db)
    ids = [int(i) for i in ids]
    deadline = None if timeout is None else time.monotonic() + timeout
    last_dispatch = time.monotonic()
    while True:
        jobs = {i: store.get(i) for i in ids}
        pending = {i: j["state"] for i, j in jobs.items() if j["state"] not in TERMINAL}
        if not pending:
            return jobs
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"jobs not finished after {timeout:g} s: {pending}")
        if time.monotonic() - last_dispatch > 1.0:
            # nobody else may be left to start queued local jobs (e.g. a dispatcher crashed)
            if any(jobs[i]["backend"] == "local" for i, s in pending.items() if s == "queued"):
                dispatch(store.path)
            last_dispatch = time.monotonic()
        time.sleep(poll_s)
