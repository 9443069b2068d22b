"""Job state through Ray instead of a shared SQLite file: the Ray backend's cluster design.

The driver owns the workspace's job database, and no Ray task opens it (SQLite's WAL mode does
not work on network file systems). A task runs the ordinary worker (core.jobs.runner) against a
copy of its job row in a database of its own, in a temporary folder on its node, and every
`interval_s` sends what changed there (state, pid, host, heartbeat, progress, message, error,
new metrics) to the driver's `JobRelay` actor, pinned to the driver's node, which writes it to
the real database. A cancel goes back the same way: each report's answer says whether the
driver's row asks the job to stop (a cancel request, or a state the driver already ended), and
the task sets the cancel in the local copy, where the worker's heartbeat sees it and stops the
step as it would locally. A task asks once, waiting, before it starts its worker, so a job
cancelled while Ray still held it queued never runs. (Ray's own `ray.cancel` is not used to
stop a running task: it raises KeyboardInterrupt wherever the task happens to be, and one
raised inside a finaliser is swallowed, which lost cancels. The backend force-kills a task
only when it outlives its job; core.jobs.ray_backend.)

A node lost mid-job takes its task with it; Ray retries the task on another node (max_retries),
the relay counts the new attempt, and the step resumes from its checkpoint. A worker dies with
the task that started it, so a lost node leaves no second writer behind. What the lost node
logged after its last report (at most one interval of metrics) is lost with it.
Artifacts (gradient stores, adapters, logs) still go to the workspace path, which every node
must reach: the one thing nodes share is that folder, not the database.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from core.jobs.database import RELAYED, TERMINAL, JobStore
from core.jobs.launch import runner_command


class JobRelay:
    """The driver-side end (a Ray actor): writes what tasks report to the job databases."""

    def __init__(self):
        self._stores: dict[str, JobStore] = {}
        self._runs: dict[tuple[str, int], str] = {}  # the task run each job last heard from

    def sync(self, db: str, job_id: int, run: str, where: str, fields: dict, records: list) -> bool:
        """Apply one report of task run `run`; return True when the job must stop (a cancel was
        requested, or the driver's row is finished). A new run of a job already heard from is
        Ray's retry of it (its node was lost): counted as an attempt."""
        if db not in self._stores:
            self._stores[db] = JobStore(db)
        store, key = self._stores[db], (db, int(job_id))
        if self._runs.get(key, run) != run:
            store.count_retry(job_id, f"retried by Ray on {where} after its node was lost")
            job = store.peek(job_id)
            with open(job["log_path"], "a", encoding="utf-8") as log:  # the run's own header
                log.write(f"=== job {job_id} retried by Ray on {where}: attempt {job['attempts']}"
                          " (the run below; its header repeats the submitted attempt) ===\n")  # fmt: skip
        self._runs[key] = run
        store.apply_remote(job_id, fields, records)
        job = store.peek(job_id)
        return bool(job["cancel_requested"]) or job["state"] in TERMINAL


class _Forwarder:
    """Sends the local copy's changes to the relay, in order, and reads the answers (whether to
    stop) as they arrive, without waiting for them.

    A task never blocks on Ray while its worker runs: Ray would lend the task's CPUs to
    another task meanwhile. Only the first report (before the worker starts) and the last are
    waited for.
    """

    def __init__(self, local: JobStore, relay, db: str, job_id: int, where: str):
        self.local, self.relay, self.db, self.job_id = local, relay, db, job_id
        self.run, self.where = uuid.uuid4().hex, where
        row = local.peek(job_id)  # the copy as made (queued, no pid, no heartbeat): not news
        self.sent = {k: row[k] for k in RELAYED if k != "message"}  # "submitted to ray" goes
        self.last_metric = 0
        self.answers: list = []  # refs of reports whose answer has not been read
        self.stop = False  # the driver asked the job to stop

    def push(self, wait: bool = False) -> bool:
        """Report what changed (the answer carries the cancel); True once the driver has asked
        the job to stop. One report is in flight at a time: while the last is unanswered a call
        only reads answers, and what changed meanwhile goes with the next report. (Sending on
        regardless queued reports at a relay slower than the interval, on a loaded driver, and
        the answer carrying a cancel came later and later: a 60 s step ran to its end.)"""
        self._read(timeout=0)
        if self.answers and not wait:
            return self.stop
        row = self.local.peek(self.job_id)
        fields = {k: row[k] for k in RELAYED if k not in self.sent or row[k] != self.sent[k]}
        self.last_metric, records = self.local.metrics_after(self.job_id, self.last_metric)
        args = (self.db, self.job_id, self.run, self.where, fields, records)
        self.answers.append(self.relay.sync.remote(*args))
        self.sent.update(fields)
        self._read(timeout=None if wait else 0)
        return self.stop

    def _read(self, timeout: float | None) -> None:
        """Take the answers that are in (all of them, waiting, when timeout is None)."""
        import ray

        if self.answers:
            ready, self.answers = ray.wait(
                self.answers, num_returns=len(self.answers), timeout=timeout
            )
            self.stop = self.stop or any(ray.get(ready))


def run_relayed(relay, db: str, job: dict, env: dict, cwd: str, interval_s: float) -> int:
    """Inside a Ray task: run `job` (a row of the driver's database `db`) through a node-local
    copy, relaying its state; the worker's exit code (0 when it never had to start). A stop
    asked by the driver (`grouptune jobs cancel`) becomes the copy's cancel request, which the
    worker's heartbeat turns into a clean stop."""
    import ray

    where = f"{os.uname().nodename} (node {ray.get_runtime_context().get_node_id()[:8]})"
    with tempfile.TemporaryDirectory(prefix=f"grouptune-job-{job['id']}-") as tmp:
        local = JobStore(Path(tmp) / "jobs.db")
        local.copy_job(job)
        forward = _Forwarder(local, relay, db, job["id"], where)
        if forward.push(wait=True):  # cancelled while Ray held it queued: never start it
            local.request_cancel(job["id"])
            forward.push(wait=True)
            return 0
        proc = subprocess.Popen(
            runner_command(local.path, job["id"], dispatch=False),
            env={**os.environ, **env}, cwd=cwd if os.path.isdir(cwd) else None,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_prepare_worker,
        )  # fmt: skip
        asked = False
        while proc.poll() is None:
            time.sleep(interval_s)
            if forward.push() and not asked:
                local.request_cancel(job["id"])  # queued: never runs; running: stops
                asked = True
        forward.push(wait=True)
        return proc.returncode


def _prepare_worker() -> None:
    """In the worker, before exec: signals as in a fresh process (a Ray worker blocks SIGINT,
    and a blocked mask is inherited: the worker's heartbeat could not interrupt its step), and
    killed when the task's process dies (Linux), so a lost node or a killed task never leaves
    a worker still writing to the workspace."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
