"""Noticing dead workers: running jobs whose heartbeat went stale and whose process is gone
are failed (JobStore.reap, on every read), and claimed jobs whose dispatcher died go back."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path

from core import settings
from core.jobs.liveness import HOST, claimer_dead, pid_alive
from core.jobs.schema import connect, transaction


def remote_grace_s() -> float:
    """How long a Ray job may go without a heartbeat before it is reaped: Ray's own retry of a
    task lost with its node comes first (core.jobs.relay). GROUPTUNE_REMOTE_GRACE_S, else 60."""
    return settings.number("GROUPTUNE_REMOTE_GRACE_S", 60.0)


def reap_dead(path: Path, stale_s: float) -> list[int]:
    """Fail running jobs with no heartbeat for `stale_s` whose process is gone; return their
    ids. A job on another host cannot have its pid checked, so its heartbeat decides; a Ray
    job gets `remote_grace_s()` at least: Ray notices a lost node and retries its task itself
    (core.jobs.relay), which takes longer than a few missed heartbeats. Claimed-but-unstarted
    jobs whose dispatcher on this host died go back to the queue."""
    now = time.time()
    cutoff = now - stale_s
    remote_cutoff = min(cutoff, now - remote_grace_s())
    with closing(connect(path)) as conn:  # cheap read first: the common case writes nothing
        stale = conn.execute(
            "SELECT id, pid, host, heartbeat, backend FROM jobs WHERE state = 'running'"
            " AND (heartbeat IS NULL OR heartbeat < ?)",
            (cutoff,),
        ).fetchall()
        orphans = conn.execute(
            "SELECT id, claimed_by FROM jobs WHERE state = 'queued' AND claimed_by IS NOT NULL"
        ).fetchall()
    stale = [r for r in stale if r["backend"] == "local" or (r["heartbeat"] or 0) < remote_cutoff]
    dead = [r for r in stale if r["host"] != HOST or not pid_alive(r["pid"])]
    lost = [r["id"] for r in orphans if claimer_dead(r["claimed_by"])]
    if not dead and not lost:
        return []
    reaped = []
    with transaction(path) as conn:
        for r in dead:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["heartbeat"] or now))
            cur = conn.execute(
                "UPDATE jobs SET state = 'failed', finished = ?, eta_s = NULL,"
                " error = ? WHERE id = ? AND state = 'running' AND"
                " (heartbeat IS NULL OR heartbeat <= ?)",  # no beat since it was read
                (
                    now,
                    f"worker died (no heartbeat since {since})",
                    r["id"],
                    r["heartbeat"] or now,
                ),
            )
            if cur.rowcount:
                reaped.append(r["id"])
        for job_id in lost:
            conn.execute(
                "UPDATE jobs SET claimed_by = NULL, message = NULL WHERE id = ?"
                " AND state = 'queued'",
                (job_id,),
            )
    return reaped
