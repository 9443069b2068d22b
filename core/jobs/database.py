"""The job database: one SQLite file (`<workspace>/jobs.db`) shared by every process.

Any process may open it at any time: the dashboard, a terminal, the workers themselves. SQLite
runs in WAL mode (readers never block the one writer) with a busy timeout, every write is one
short transaction, and read-modify-write steps take the write lock first (`BEGIN IMMEDIATE`),
so concurrent submitters, workers and readers never lose an update.

A job's life: queued -> running -> done | failed | cancelled (and failed/cancelled -> queued
again on resume). Workers prove they are alive with a heartbeat; every read (`get`, `list`)
first reaps running jobs whose heartbeat is stale *and* whose process is gone, so whoever looks
next notices a dead worker.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import GroupTuneError
from core.jobs.claiming import claim
from core.jobs.liveness import HOST, heartbeat_interval, pid_alive
from core.jobs.programs import DEFAULT_PROGRAM, check_program
from core.jobs.reaping import reap_dead
from core.jobs.schema import (
    STATES,
    TERMINAL,
    check_argv,
    check_ids,
    check_resources,
    connect,
    decode,
    init_schema,
    json_default,
    log_name,
    transaction,
)

# the columns a relayed worker's row reports back (core.jobs.relay)
RELAYED = ("state", "started", "finished", "host", "pid", "heartbeat", "progress", "eta_s",
           "message", "error", "exit_code")  # fmt: skip

__all__ = ["HOST", "STATES", "TERMINAL", "JobNotFound", "JobStateError", "JobStore", "pid_alive"]


class JobNotFound(GroupTuneError, KeyError):
    """No job with that id in this database."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class JobStateError(GroupTuneError):
    """The job is not in a state that allows the operation (e.g. resuming a running job)."""


class JobStore:
    """Jobs and their metrics in one SQLite file. Safe to use from many processes and threads.

    `heartbeat_s` defaults to `heartbeat_interval()`; a running job is reaped (marked failed)
    when its heartbeat is older than `stale_after` heartbeats and its process is not alive.
    `on_reap(ids)` is called after a read reaped jobs (the scheduler uses it to start what
    was waiting on them).
    """

    def __init__(
        self,
        db_path: str | os.PathLike,
        heartbeat_s: float | None = None,
        stale_after: float = 3,
        on_reap: Callable[[list[int]], None] | None = None,
    ):
        self.path = Path(db_path).expanduser().resolve()
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else heartbeat_interval()
        self.stale_after = stale_after
        self.on_reap = on_reap
        self.path.parent.mkdir(parents=True, exist_ok=True)
        init_schema(self.path)

    @property
    def workspace(self) -> Path:
        return self.path.parent

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = connect(self.path)
        try:
            yield conn
        finally:
            conn.close()

    def _write(self):
        return transaction(self.path)

    # --- submitting --------------------------------------------------------------------------
    def submit(
        self,
        name: str,
        step: str,
        argv: Iterable[str],
        program: str = DEFAULT_PROGRAM,
        depends_on: Iterable[int] = (),
        resources: dict | None = None,
        backend: str = "local",
        cwd: str | os.PathLike | None = None,
    ) -> int:
        """Queue a job that runs `<program> <argv...>` (core.jobs.programs); return its id.

        Nothing is started here (see `core.jobs.scheduler.submit` for submit-and-start).
        Raises ValueError naming the argument when one is malformed or a dependency is unknown.
        """
        argv, program = check_argv(argv), check_program(program)
        deps = check_ids(depends_on)
        resources = check_resources(resources)
        if not isinstance(step, str) or not step.strip():
            raise ValueError(f"step must be a short non-empty label, got {step!r}")
        cwd = str(Path(cwd).resolve()) if cwd is not None else os.getcwd()
        with self._write() as conn:
            if deps:
                marks = ",".join("?" * len(deps))
                found = {
                    r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE id IN ({marks})", deps)
                }
                missing = sorted(set(deps) - found)
                if missing:
                    raise ValueError(f"depends_on: no job with id {missing} in {self.path}")
            cur = conn.execute(
                "INSERT INTO jobs (name, step, program, argv, depends_on, resources, backend, cwd,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (str(name), step, program, json.dumps(argv), json.dumps(deps),
                 json.dumps(resources), backend, cwd, time.time()),
            )  # fmt: skip
            job_id = cur.lastrowid
            log_path = self.workspace / "logs" / log_name(job_id, step)
            conn.execute("UPDATE jobs SET log_path = ? WHERE id = ?", (str(log_path), job_id))
        return job_id

    # --- reading (every read reaps dead workers first) -----------------------------------------
    def get(self, job_id: int) -> dict:
        """The job as a dict (argv, depends_on, resources decoded); raises JobNotFound."""
        self.reap()
        return self.peek(job_id)

    def peek(self, job_id: int) -> dict:
        """Like `get` without reaping: for the worker and the scheduler themselves."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id} in {self.path}")
        return decode(row)

    def list(self, state: str | Iterable[str] | None = None) -> list[dict]:
        """All jobs (or those in `state`, one name or several), oldest first."""
        self.reap()
        with self._read() as conn:
            if state is None:
                rows = conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
            else:
                states = [state] if isinstance(state, str) else list(state)
                marks = ",".join("?" * len(states))
                rows = conn.execute(
                    f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states
                ).fetchall()
        return [decode(r) for r in rows]

    def metrics(self, job_id: int) -> list[dict]:
        """The step's metrics records in the order they were logged, each with its time `ts`
        (not the worker's timing record: see `timing`)."""
        records = self._records(job_id)
        return [r for r in records if "timing" not in r]

    def timing(self, job_id: int) -> dict | None:
        """Where the job's last attempt spent its time, as its worker reported at the end
        (core.jobs.runner: process and step start, compute and model-load seconds), or None."""
        timings = [r["timing"] for r in self._records(job_id) if "timing" in r]
        return timings[-1] if timings else None

    def _records(self, job_id: int) -> list[dict]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT ts, record FROM metrics WHERE job_id = ? ORDER BY id", (int(job_id),)
            ).fetchall()
        return [{"ts": r["ts"], **json.loads(r["record"])} for r in rows]

    def integrity_check(self) -> str:
        """SQLite's own integrity check: 'ok' when the file is sound."""
        with self._read() as conn:
            return conn.execute("PRAGMA integrity_check").fetchone()[0]

    # --- progress from a worker --------------------------------------------------------------
    def update_progress(
        self, job_id: int, fraction: float | None, eta_s: float | None, message: str | None
    ) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET progress = ?, eta_s = ?, message = ? WHERE id = ?",
                (fraction, eta_s, message, int(job_id)),
            )

    def append_metrics(self, job_id: int, records: dict | Iterable[dict]) -> None:
        """Add one record or several (one transaction) to a job's metrics."""
        records = [records] if isinstance(records, dict) else list(records)
        if not records:
            return
        now = time.time()
        rows = [(int(job_id), now, json.dumps(r, default=json_default)) for r in records]
        with self._write() as conn:
            conn.executemany("INSERT INTO metrics (job_id, ts, record) VALUES (?, ?, ?)", rows)

    def beat(self, job_id: int) -> bool:
        """Record a heartbeat; return True if someone asked the job to stop."""
        with self._write() as conn:
            conn.execute("UPDATE jobs SET heartbeat = ? WHERE id = ?", (time.time(), int(job_id)))
            row = conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (int(job_id),))
            return bool(row.fetchone()[0])

    # --- a worker on another node (core.jobs.relay) --------------------------------------------
    def metrics_after(self, job_id: int, after: int = 0) -> tuple[int, list[dict]]:
        """(last metric id, the records logged after metric id `after`, in order)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, record FROM metrics WHERE job_id = ? AND id > ? ORDER BY id",
                (int(job_id), int(after)),
            ).fetchall()
        return (rows[-1]["id"] if rows else after), [json.loads(r["record"]) for r in rows]

    def copy_job(self, job: dict) -> None:
        """Insert `job` (a row of another database) under its own id, queued and without
        dependencies: the node-local copy a relayed worker runs against."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (id, name, step, program, argv, resources, backend, cwd, created,"
                " attempts, log_path, claimed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (int(job["id"]), job["name"], job["step"], job["program"], json.dumps(job["argv"]),
                 json.dumps(job["resources"] or {}), job["backend"], job["cwd"], job["created"],
                 job["attempts"], job["log_path"], "relay"),
            )  # fmt: skip

    def apply_remote(self, job_id: int, fields: dict, records: list[dict]) -> None:
        """Write what a worker on another node reported (its row's RELAYED fields and new
        metrics) unless the job is already finished here."""
        cols = [k for k in RELAYED if k in fields]
        now = time.time()
        with self._write() as conn:
            if cols:
                sets = ", ".join(f"{c} = ?" for c in cols)
                conn.execute(
                    f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ('queued', 'running')",
                    [fields[c] for c in cols] + [int(job_id)],
                )
            rows = [(int(job_id), now, json.dumps(r, default=json_default)) for r in records]
            conn.executemany("INSERT INTO metrics (job_id, ts, record) VALUES (?, ?, ?)", rows)

    def count_retry(self, job_id: int, message: str) -> None:
        """Another attempt of a started job, made by the backend itself (Ray's retry)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET attempts = attempts + 1, message = ? WHERE id = ?",
                (message, int(job_id)),
            )

    # --- state transitions -------------------------------------------------------------------
    def claim_next(
        self, backend: str, max_running: int | None, claimer: str, workers_only: bool = False
    ) -> dict | None:
        """Take the oldest queued `backend` job whose dependencies are done, if below the limit.

        One write transaction, so two dispatchers never take the same job and the running
        count cannot be exceeded. On the way, queued jobs whose dependency failed or was
        cancelled become failed (they can never start). Local jobs become running at once
        (the caller then records the worker's pid); other backends keep the job queued and
        mark it claimed until their worker starts. `workers_only` passes over driver jobs.
        """
        with self._write() as conn:
            return claim(conn, backend, max_running, claimer, workers_only)

    def set_pid(self, job_id: int, pid: int, host: str = HOST) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET pid = ?, host = ? WHERE id = ?", (int(pid), host, int(job_id))
            )

    def mark_running(self, job_id: int, pid: int, host: str = HOST) -> bool:
        """The worker has started: record its pid and first heartbeat.

        Returns False (and changes nothing) if the job was cancelled or finished meanwhile,
        in which case the worker must not run it.
        """
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'running', pid = ?, host = ?, heartbeat = ?,"
                " started = coalesce(started, ?), message = NULL"
                " WHERE id = ? AND state IN ('queued', 'running') AND cancel_requested = 0",
                (int(pid), host, now, now, int(job_id)),
            )
            return cur.rowcount == 1

    def mark_done(self, job_id: int, message: str | None = None) -> bool:
        return self._finish(job_id, "done", exit_code=0, message=message)

    def mark_failed(self, job_id: int, error: str, exit_code: int | None = None) -> bool:
        return self._finish(job_id, "failed", error=error, exit_code=exit_code)

    def mark_cancelled(self, job_id: int, message: str = "cancelled") -> bool:
        return self._finish(job_id, "cancelled", message=message)

    def _finish(self, job_id, state, *, error=None, exit_code=None, message=None) -> bool:
        """Move a queued or running job to a terminal state; False if it already was terminal."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = ?, finished = ?, error = ?, exit_code = ?,"
                " message = coalesce(?, message), eta_s = NULL,"
                " progress = CASE WHEN ? = 'done' THEN 1.0 ELSE progress END"
                " WHERE id = ? AND state IN ('queued', 'running')",
                (state, time.time(), error, exit_code, message, state, int(job_id)),
            )
            return cur.rowcount == 1

    def request_cancel(self, job_id: int) -> str:
        """Ask a job to stop; return its state afterwards.

        A queued job is cancelled at once; a running one gets `cancel_requested` (its worker
        stops at the next heartbeat); a finished one is left as it is.
        """
        with self._write() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id} in {self.path}")
            if row["state"] == "queued":
                conn.execute(
                    "UPDATE jobs SET state = 'cancelled', finished = ?, cancel_requested = 1,"
                    " message = 'cancelled before it started' WHERE id = ?",
                    (time.time(), int(job_id)),
                )
                return "cancelled"
            if row["state"] == "running":
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (int(job_id),))
            return row["state"]

    def requeue(self, job_id: int) -> list[int]:
        """Queue a failed or cancelled job again (attempts + 1); return the ids re-queued.

        Jobs that never started because this one failed are queued again with it. Raises
        JobStateError for a job that is queued, running or done.
        """
        with self._write() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id} in {self.path}")
            if row["state"] not in ("failed", "cancelled"):
                raise JobStateError(
                    f"job {job_id} is {row['state']}; only failed or cancelled jobs can be "
                    "resumed or retried"
                )
            ids, todo = [], [int(job_id)]
            while todo:
                current = todo.pop()
                ids.append(current)
                conn.execute(
                    "UPDATE jobs SET state = 'queued', attempts = attempts + 1, started = NULL,"
                    " finished = NULL, pid = NULL, host = NULL, heartbeat = NULL,"
                    " claimed_by = NULL, eta_s = NULL, message = NULL, error = NULL,"
                    " exit_code = NULL, cancel_requested = 0 WHERE id = ?",
                    (current,),
                )
                blocked = conn.execute(
                    "SELECT id FROM jobs WHERE state = 'failed' AND started IS NULL"
                    " AND error LIKE ?",
                    (f"not started: depends on job {current} (%",),
                )
                todo.extend(r[0] for r in blocked)
            return ids

    # --- noticing dead workers ---------------------------------------------------------------
    def reap(self) -> list[int]:
        """Fail running jobs with a stale heartbeat whose process is gone (core.jobs.reaping);
        return their ids, after telling `on_reap`."""
        reaped = reap_dead(self.path, self.stale_after * self.heartbeat_s)
        if reaped and self.on_reap is not None:
            self.on_reap(reaped)
        return reaped
