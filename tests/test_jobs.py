"""The job system: detached workers, state in SQLite, crash recovery, cancel, limits, Ray.

Steps are the tiny commands in tests/job_fixtures.py, run as `python -m tests.job_fixtures`.
Heartbeats are every 0.2 s here (GROUPTUNE_HEARTBEAT_S), so a dead worker is noticed in ~0.6 s.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.errors import GroupTuneError
from core.io import read_json
from core.jobs import (
    JobStateError,
    JobStore,
    cancel,
    get_backend,
    open_store,
    resume,
    retry,
    submit,
    wait,
)
from core.jobs.cli import jobs_app
from core.jobs.database import HOST, pid_alive
from core.jobs.launch import runner_command
from core.jobs.schema import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = "tests.job_fixtures:main"
HEARTBEAT_S = 0.2


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace; afterwards, any worker still running is killed (only ones we started)."""
    monkeypatch.setenv("GROUPTUNE_HEARTBEAT_S", str(HEARTBEAT_S))
    monkeypatch.setenv("GROUPTUNE_PROGRESS", "0")
    monkeypatch.delenv("GROUPTUNE_MAX_JOBS", raising=False)
    yield tmp_path
    db = tmp_path / "jobs.db"
    if db.exists() and _schema_version(db) == SCHEMA_VERSION:  # one test leaves a "newer" one
        for job in JobStore(db).list("running"):
            if job["pid"] and job["host"] == HOST and pid_alive(job["pid"]):
                os.killpg(job["pid"], signal.SIGKILL)


def _schema_version(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def job(ws: Path, *argv: str, step: str = "test", **kwargs) -> int:
    return submit(ws, step, step, list(argv), program=FIXTURES, cwd=ws, **kwargs)


def poll(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def max_overlap(jobs: list[dict]) -> int:
    """Most jobs running at the same moment, from their [started, finished] intervals."""
    events = sorted([(j["started"], 1) for j in jobs] + [(j["finished"], -1) for j in jobs])
    running = peak = 0
    for _, delta in events:  # at equal times, -1 sorts first: a handover is not an overlap
        running += delta
        peak = max(peak, running)
    return peak


def read_log(job: dict) -> str:
    path = Path(job["log_path"])
    return path.read_text() if path.exists() else ""


# --- crash recovery ----------------------------------------------------------------------
def test_killed_worker_is_reaped_and_resume_continues_from_checkpoint(ws):
    reference = job(ws, "count", "40", "--checkpoint", "reference.json", step="reference")
    assert wait(ws, [reference], timeout=30)[reference]["state"] == "done"

    checkpoint, trace = ws / "count.json", ws / "trace.txt"
    args = [
        "count",
        "40",
        "--checkpoint",
        str(checkpoint),
        "--delay",
        "0.05",
        "--trace",
        str(trace),
    ]
    job_id = job(ws, *args, step="count")
    store = open_store(ws)
    poll(lambda: checkpoint.exists() and read_json(checkpoint)["value"] >= 10, 20, "10 steps")
    os.kill(store.get(job_id)["pid"], signal.SIGKILL)
    dead = poll(lambda: (j := store.get(job_id))["state"] == "failed" and j, 120, "the reap")
    assert dead["error"].startswith("worker died (no heartbeat since")
    stopped_at = read_json(checkpoint)["value"]
    assert 10 <= stopped_at < 40

    resumed = resume(ws, job_id)
    assert resumed["attempts"] == 2
    final = wait(ws, [job_id], timeout=30)[job_id]
    assert final["state"] == "done" and final["error"] is None
    assert checkpoint.read_text() == (ws / "reference.json").read_text()  # same final result
    steps = [int(line) for line in trace.read_text().split()]
    assert sorted(set(steps)) == list(range(1, 41))
    assert len(steps) <= 41  # did not start over: at most the interrupted step ran twice
    assert f"resuming from {stopped_at}" in read_log(final)
    assert [m["step"] for m in store.metrics(job_id)][-1] == 40


# --- detached workers --------------------------------------------------------------------
def test_job_outlives_the_process_that_submitted_it(ws):
    code = (
        f"from core.jobs import submit; print(submit({str(ws)!r}, 'nap', 'sleep', "
        f"['sleep', '1.5'], program={FIXTURES!r}, cwd={str(ws)!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout)
    assert open_store(ws).get(job_id)["state"] in ("queued", "running")  # submitter is gone
    done = wait(ws, [job_id], timeout=30)[job_id]
    assert done["state"] == "done" and done["exit_code"] == 0
    assert "slept" in read_log(done)


SUBMITTER = textwrap.dedent(
    """
    import json, sys, time
    from core.jobs import open_store, submit
    ws, tag = sys.argv[1], sys.argv[2]
    ids = [submit(ws, f"{tag}-{i}", "count", ["count", "3", "--checkpoint", f"{tag}-{i}.json"],
                  program="tests.job_fixtures:main", cwd=ws) for i in range(10)]
    store = open_store(ws)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(store.get(i)["state"] == "done" for i in ids):
            break
        time.sleep(0.2)
    print(json.dumps(ids))
    """
)


OPENER = """
import sys, time
from pathlib import Path
from core.jobs.database import JobStore
start = float(sys.argv[2])
while time.time() < start:  # every process opens the new file at the same instant
    pass
JobStore(Path(sys.argv[1]))
"""


def test_processes_creating_the_job_database_at_the_same_instant(tmp_path):
    # switching a new file to WAL answered "database is locked" at once (9 of 120 openings
    # failed in 20 such rounds) until the switch was retried
    for round_ in range(4):
        db, start = tmp_path / f"r{round_}" / "jobs.db", time.time() + 2.0
        db.parent.mkdir()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OPENER, str(db), str(start)],
                cwd=ROOT,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
        assert _schema_version(db) == SCHEMA_VERSION


def test_many_processes_submitting_and_polling_at_once(ws, monkeypatch):
    monkeypatch.setenv("GROUPTUNE_MAX_JOBS", "2")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, str(ws), f"p{i}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        ids += json.loads(out)
    assert len(ids) == len(set(ids)) == 40

    store = open_store(ws)
    jobs = store.list()
    assert sorted(j["id"] for j in jobs) == sorted(ids)
    assert all(j["state"] == "done" for j in jobs), [(j["id"], j["state"]) for j in jobs]
    for j in jobs:  # no lost updates: every metrics record and checkpoint arrived
        assert [m["step"] for m in store.metrics(j["id"])] == [1, 2, 3]
        assert read_json(ws / f"{j['name']}.json") == {"value": 3, "sum_sq": 14}
    assert max_overlap(jobs) <= 2
    assert store.integrity_check() == "ok"


def test_concurrency_limit_is_respected(ws):
    ids = [job(ws, "sleep", "0.6", step=f"nap-{i}", max_jobs=2) for i in range(5)]
    jobs = list(wait(ws, ids, timeout=30).values())
    assert all(j["state"] == "done" for j in jobs)
    assert max_overlap(jobs) == 2  # never more than the limit, and the limit was used


# --- failures and dependencies -----------------------------------------------------------
def test_failing_job_records_traceback_and_blocks_its_dependents(ws):
    bad = job(ws, "fail", "--message", "boom", step="features")
    child = job(ws, "sleep", "0", step="train:group-0", depends_on=[bad])
    grandchild = job(ws, "sleep", "0", step="evaluate", depends_on=[child])
    jobs = wait(ws, [bad, child, grandchild], timeout=30)

    assert jobs[bad]["state"] == "failed"
    assert jobs[bad]["error"] == "RuntimeError: boom"
    assert jobs[bad]["exit_code"] == 1
    log = read_log(jobs[bad])
    assert "Traceback (most recent call last)" in log and "RuntimeError: boom" in log
    assert jobs[child]["state"] == "failed" and jobs[child]["started"] is None
    assert jobs[child]["error"] == f"not started: depends on job {bad} (features) which failed"
    assert jobs[grandchild]["error"].startswith(f"not started: depends on job {child} ")
    assert not Path(jobs[child]["log_path"]).exists()

    retry(ws, bad)  # fails again, and takes the dependents it had blocked along
    jobs = wait(ws, [bad, child, grandchild], timeout=30)
    assert jobs[bad]["attempts"] == 2 and jobs[child]["attempts"] == 2
    assert read_log(jobs[bad]).count("RuntimeError: boom") == 2  # both attempts in one log
    with pytest.raises(JobStateError):
        retry(ws, job(ws, "sleep", "0", step="fine"))  # queued or running: not retryable


def test_exit_code_and_job_environment(ws):
    bad = job(ws, "exit", "3", step="exit")
    env = job(ws, "env", step="env")
    jobs = wait(ws, [bad, env], timeout=30)
    assert jobs[bad]["state"] == "failed" and jobs[bad]["exit_code"] == 3
    assert jobs[bad]["error"] == "exit code 3: exiting with 3"
    assert jobs[env]["state"] == "done"
    log = read_log(jobs[env])
    assert f"GROUPTUNE_JOB_ID={env}" in log and f"GROUPTUNE_JOB_DB={ws / 'jobs.db'}" in log
    assert f"cwd={ws}" in log
    assert jobs[env]["log_path"] == str(ws / "logs" / f"{env}-env.log")


# --- cancel ------------------------------------------------------------------------------
def test_cancel_stops_a_running_job_promptly(ws):
    running = job(ws, "sleep", "30", step="nap")
    queued = job(ws, "sleep", "30", step="later")
    store = open_store(ws)
    poll(lambda: "sleeping" in read_log(store.get(running)), 20, "the step to start")
    assert cancel(ws, queued)["state"] == "cancelled"

    stopped = cancel(ws, running, grace_s=120)
    assert stopped["state"] == "cancelled"
    # stopped by itself at a heartbeat ("killed: …" would mean the grace ran out)
    assert stopped["message"] == "cancelled while running"
    assert "slept" not in read_log(stopped)
    poll(lambda: not pid_alive(stopped["pid"]), 60, "the worker to exit")
    assert store.get(queued)["started"] is None


def test_cancel_escalates_to_kill_when_the_step_ignores_it(ws):
    job_id = job(ws, "stubborn", "30", step="stubborn")
    store = open_store(ws)
    poll(lambda: "ignoring interrupts" in read_log(store.get(job_id)), 20, "the step to start")
    pid = store.get(job_id)["pid"]
    stopped = cancel(ws, job_id, grace_s=0.5)
    assert stopped["state"] == "cancelled" and stopped["message"].startswith("killed")
    poll(lambda: not pid_alive(pid), 5, "the worker to be killed")


def test_job_cancelled_between_claim_and_worker_start_is_cancelled(ws):
    store = JobStore(ws / "jobs.db")
    job_id = store.submit("late", "late", ["sleep", "30"], program=FIXTURES, cwd=ws)
    assert store.claim_next("local", 1, f"{HOST}:0")["id"] == job_id  # as dispatch would
    assert store.request_cancel(job_id) == "running"
    worker = subprocess.run(runner_command(store.path, job_id, dispatch=False), cwd=ROOT)
    assert worker.returncode == 0
    job = store.peek(job_id)
    assert job["state"] == "cancelled" and job["message"] == "cancelled before it started"


# --- the store and the CLI ---------------------------------------------------------------
def test_store_refuses_a_newer_schema_and_bad_input(ws):
    store = JobStore(ws / "jobs.db")
    with pytest.raises(ValueError, match="depends_on"):
        store.submit("x", "x", ["a"], depends_on=[99])
    with pytest.raises(ValueError, match="argv"):
        store.submit("x", "x", "not a list")
    with pytest.raises(ValueError, match="resources"):
        store.submit("x", "x", [], resources={"tpus": 1})
    conn = sqlite3.connect(ws / "jobs.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(GroupTuneError, match="newer"):
        JobStore(ws / "jobs.db")


def test_each_job_reports_where_its_time_went(ws):
    """The worker's last metrics record splits the job's time: the process's start, the step,
    and the compute inside it (open progress bars), as bench/e2e.py's startup_share reads it."""
    counted = job(ws, "count", "12", "--checkpoint", "c.json", "--delay", "0.05")
    slept = job(ws, "sleep", "0.3")
    jobs = wait(ws, [counted, slept], timeout=60)
    store = JobStore(ws / "jobs.db")
    assert all("timing" not in r for r in store.metrics(counted))  # the step's own records
    for job_id in (counted, slept):
        t = store.timing(job_id)
        row = jobs[job_id]
        assert row["started"] - 0.05 <= t["process_started"] <= t["step_started"]
        assert t["step_started"] <= t["step_finished"] <= row["finished"]
        assert t["compute_s"] <= t["step_finished"] - t["step_started"]
    assert store.timing(counted)["compute_s"] >= 12 * 0.05  # the bar was open while it counted
    assert store.timing(slept)["compute_s"] == 0  # no bar: all of it is tax


def test_a_reused_worker_runs_the_chain_of_ready_jobs_itself(ws):
    """With reuse_workers one process runs each job as it becomes ready, in order, with the
    same outcomes (its own log per job, failures stopping their dependents)."""
    first = job(ws, "count", "5", "--checkpoint", "a.json", reuse_workers=True)
    second = job(ws, "count", "7", "--checkpoint", "b.json", depends_on=[first])
    failing = job(ws, "fail", "--message", "third breaks", depends_on=[second])
    blocked = job(ws, "sleep", "0", depends_on=[failing])
    jobs = wait(ws, [first, second, failing, blocked], timeout=60)
    assert [jobs[i]["state"] for i in (first, second, failing, blocked)] == [
        "done",
        "done",
        "failed",
        "failed",
    ]
    assert len({jobs[i]["pid"] for i in (first, second, failing)}) == 1  # one process
    assert read_json(ws / "b.json") == {"value": 7, "sum_sq": 140}
    assert "third breaks" in jobs[failing]["error"] and "depends on job" in jobs[blocked]["error"]
    assert "its job 2" in read_log(jobs[second]) and "counted to 5" not in read_log(jobs[second])
    # without it, each job has its own process
    alone = [job(ws, "sleep", "0", step=f"alone-{i}") for i in range(2)]
    pids = {j["pid"] for j in wait(ws, alone, timeout=60).values()}
    assert len(pids) == 2


def test_cli_list_show_logs_and_errors(ws):
    ok = job(ws, "count", "3", "--checkpoint", "c.json", step="count")
    bad = job(ws, "fail", step="fail")
    wait(ws, [ok, bad], timeout=30)
    cli = CliRunner()

    listed = cli.invoke(jobs_app, ["list", "--workspace", str(ws), "--json"])
    assert listed.exit_code == 0
    assert [(j["id"], j["state"]) for j in json.loads(listed.stdout)] == [
        (ok, "done"),
        (bad, "failed"),
    ]
    shown = json.loads(cli.invoke(jobs_app, ["show", str(ok), "-w", str(ws), "--json"]).stdout)
    assert shown["metrics_count"] == 3 and shown["last_metrics"]["sum_sq"] == 14
    assert shown["timing"]["step_started"] <= shown["timing"]["step_finished"]
    human = cli.invoke(jobs_app, ["show", str(ok), "-w", str(ws)]).stdout
    assert "s compute" in human and "s process start" in human
    logs = cli.invoke(jobs_app, ["logs", str(bad), "-w", str(ws), "--tail", "2", "--json"])
    assert json.loads(logs.stdout)["lines"][0] == "RuntimeError: boom"
    text = cli.invoke(jobs_app, ["list", "-w", str(ws)])
    assert "RuntimeError: boom" in text.stdout

    missing = cli.invoke(jobs_app, ["show", "99", "-w", str(ws), "--json"])
    assert missing.exit_code == 1 and "no job 99" in json.loads(missing.stdout)["error"]
    again = cli.invoke(jobs_app, ["resume", str(ok), "-w", str(ws)])
    assert again.exit_code == 1 and "only failed or cancelled" in again.stderr
    retried = cli.invoke(jobs_app, ["retry", str(bad), "-w", str(ws), "--json"])
    assert json.loads(retried.stdout)["attempts"] == 2
    wait(ws, [bad], timeout=30)


# --- Ray ---------------------------------------------------------------------------------
def test_ray_backend_runs_the_same_jobs(ws, monkeypatch):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'grouptune[ray]')")
    backend = get_backend("ray", num_cpus=2)
    try:
        first = job(ws, "count", "5", "--checkpoint", "ray.json", step="count",
                    backend=backend, resources={"cpus": 1})  # fmt: skip
        then = job(ws, "env", step="env", backend=backend, depends_on=[first])
        bad = job(ws, "fail", step="fail", backend=backend)
        jobs = wait(ws, [first, then, bad], timeout=90)
    finally:
        backend.shutdown()
    assert jobs[first]["state"] == "done" and jobs[first]["backend"] == "ray"
    assert [m["step"] for m in open_store(ws).metrics(first)] == [1, 2, 3, 4, 5]
    assert read_json(ws / "ray.json") == {"value": 5, "sum_sq": 55}
    assert jobs[then]["state"] == "done" and jobs[then]["started"] >= jobs[first]["finished"]
    assert f"GROUPTUNE_JOB_ID={then}" in read_log(jobs[then])
    assert jobs[bad]["state"] == "failed" and jobs[bad]["error"] == "RuntimeError: boom"


def test_a_clusters_token_file_is_passed_not_auth_turned_off(tmp_path, monkeypatch):
    from core.jobs.ray_backend import use_token_file

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):  # recorded, so undone after the test
        monkeypatch.setenv(name, "")  # (delenv of an unset name records nothing to undo)
        monkeypatch.delenv(name)
    with pytest.raises(GroupTuneError, match="not a readable file"):
        use_token_file(tmp_path / "missing")
    token = tmp_path / "token"
    token.write_text("secret")
    use_token_file(token)
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)


def test_each_step_asks_for_its_resources():
    from core.config import parse_config
    from core.pipeline import step_resources

    cfg = parse_config({"tasks": ["a"], "jobs": {"resources": {"train": {"cpus": 2, "gpus": 0.5}}}})
    assert step_resources(cfg, "train:group-0", gpus_present=False) == {"cpus": 2, "gpus": 0.5}
    assert step_resources(cfg, "gradients:a+b", gpus_present=True) == {"gpus": 1}
    assert step_resources(cfg, "affinity", gpus_present=True) == {}  # no model, no GPU
    assert step_resources(cfg, "evaluate:zero-shot", gpus_present=False) == {}


def test_a_jobs_threads_follow_its_cpus(monkeypatch):
    from core.models.device import _threads_per_job

    monkeypatch.setenv("GROUPTUNE_MAX_JOBS", "1")
    monkeypatch.delenv("GROUPTUNE_THREADS", raising=False)
    assert _threads_per_job() is None  # all of the machine's threads
    monkeypatch.setenv("GROUPTUNE_THREADS", "3")  # what the runner sets from resources.cpus
    assert _threads_per_job() == 3
