"""Taking the next job off the queue: the scheduler's one rule, inside the caller's write
transaction (core.jobs.database.JobStore.claim_next)."""

from __future__ import annotations

import json
import sqlite3
import time

from core.jobs.liveness import HOST
from core.jobs.schema import decode


def claim(
    conn: sqlite3.Connection,
    backend: str,
    max_running: int | None,
    claimer: str,
    workers_only: bool = False,
) -> dict | None:
    """The oldest queued `backend` job whose dependencies are done, if below the limit, now
    running (local) or claimed (other backends); queued jobs that can never start fail first."""
    fail_blocked(conn)
    # a driver job (resources {"slots": 0}, e.g. `grouptune run`) only waits on others:
    # it neither counts against the limit nor is held back by it
    busy = conn.execute(
        "SELECT count(*) FROM jobs WHERE backend = ? AND (state = 'running' OR "
        "(state = 'queued' AND claimed_by IS NOT NULL)) "
        "AND coalesce(json_extract(resources, '$.slots'), 1) != 0",
        (backend,),
    ).fetchone()[0]
    full = max_running is not None and busy >= max_running
    states = dict(conn.execute("SELECT id, state FROM jobs").fetchall())
    queued = conn.execute(
        "SELECT id, depends_on, resources FROM jobs WHERE state = 'queued' AND backend = ? "
        "AND claimed_by IS NULL AND cancel_requested = 0 ORDER BY id",
        (backend,),
    ).fetchall()
    for row in queued:
        driver = (json.loads(row["resources"] or "{}") or {}).get("slots", 1) == 0
        if (full and not driver) or (workers_only and driver):
            continue
        if all(states.get(d) == "done" for d in json.loads(row["depends_on"])):
            now = time.time()
            if backend == "local":
                conn.execute(
                    "UPDATE jobs SET state = 'running', started = ?, heartbeat = ?, "
                    "host = ?, claimed_by = ?, pid = NULL WHERE id = ?",
                    (now, now, HOST, claimer, row["id"]),
                )
            else:
                conn.execute(
                    "UPDATE jobs SET claimed_by = ?, message = ? WHERE id = ?",
                    (claimer, f"submitted to {backend}", row["id"]),
                )
            return decode(conn.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())
    return None


def fail_blocked(conn: sqlite3.Connection) -> None:
    """Fail the queued jobs whose dependency failed or was cancelled (they can never start)."""
    # Ids only grow and dependencies must exist at submit, so one pass in id order
    # also fails the dependents of jobs failed earlier in this same pass.
    jobs = {r["id"]: r for r in conn.execute("SELECT id, step, state, depends_on FROM jobs")}
    states = {i: r["state"] for i, r in jobs.items()}
    now = time.time()
    for job_id in sorted(i for i, s in states.items() if s == "queued"):
        for dep in json.loads(jobs[job_id]["depends_on"]):
            if states.get(dep) in ("failed", "cancelled"):
                how = "failed" if states[dep] == "failed" else "was cancelled"
                error = f"not started: depends on job {dep} ({jobs[dep]['step']}) which {how}"
                conn.execute(
                    "UPDATE jobs SET state = 'failed', error = ?, finished = ? WHERE id = ?",
                    (error, now, job_id),
                )
                states[job_id] = "failed"
                break
