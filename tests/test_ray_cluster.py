"""The Ray backend on a real multi-node cluster on this one machine (ray.cluster_utils.Cluster).

The head node has no CPUs, so every job runs on a worker node; each worker node has its own
temporary folder (TMPDIR), where its tasks keep their job-row copies: the job database is the
driver's alone (core.jobs.relay). Custom resources stand in for GPUs, to pin a job to a node.
Covered: a whole `grouptune run` of the tiny experiment across nodes, with the same report as
the local backend; a node killed mid-job and the job retried by Ray on another node, resuming
from its checkpoint; and cancel.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import write_tiny_experiment

from core.io import read_json
from core.jobs import JobStore, cancel, open_store, submit, wait

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'grouptune[ray]')")

FIXTURES = "tests.job_fixtures:main"
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    mp = pytest.MonkeyPatch()
    mp.setenv("GROUPTUNE_HEARTBEAT_S", "0.5")
    mp.setenv("GROUPTUNE_PROGRESS", "0")
    mp.setenv("GROUPTUNE_THREADS", "1")  # the same arithmetic on every node and locally
    mp.setenv("GROUPTUNE_REMOTE_GRACE_S", "600")  # a busy CI machine: Ray's retry may be slow
    head = {"num_cpus": 0, "include_dashboard": False, "object_store_memory": 80 * 2**20}
    c = Cluster(initialize_head=True, head_node_args=head)
    for name in ("a", "b"):
        tmp = tmp_path_factory.mktemp(f"node-{name}")
        c.add_node(**NODE, resources={f"node_{name}": 1}, env_vars={"TMPDIR": str(tmp)})
    c.wait_for_nodes()
    from core.jobs.ray_backend import RayBackend
    from core.jobs.scheduler import dispatch

    backend = RayBackend(address=c.address, dispatch=dispatch, relay_interval_s=0.3)
    yield c, backend
    backend.shutdown()
    ray.shutdown()
    c.shutdown()
    mp.undo()


def _job(ws, *argv, step="test", **kw) -> int:
    return submit(ws, step, step, list(argv), program=FIXTURES, cwd=ws, **kw)


def _until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.parametrize("m,local_jobs", [(2, 1), (3, 2)])
def test_a_whole_run_across_nodes_gives_the_local_report(
    cluster, tmp_path, monkeypatch, m, local_jobs
):
    """m groups forced: the group jobs run at once on the nodes (and locally with local_jobs
    at once), and the run ends with the same report on both backends."""
    from core.config import load_config
    from core.pipeline import run
    from core.workspace import open_workspace

    _, backend = cluster
    cfg = load_config(write_tiny_experiment(tmp_path, grouping={"m": m}))
    reports = {}
    monkeypatch.setenv("GROUPTUNE_MAX_JOBS", str(local_jobs))  # read by the local backend
    for name, engine in (("ray", backend), ("local", None)):
        ws = open_workspace(tmp_path / f"ws-{name}", cfg)
        reports[name] = run(cfg, ws, backend=engine, log=lambda msg: None)
        jobs = open_store(ws.root).list()
        assert {j["state"] for j in jobs} == {"done"}, [(j["step"], j["error"]) for j in jobs]
        assert {j["backend"] for j in jobs} == {name}
    assert len(reports["ray"]["groups"]) == m
    for key in ("accuracy", "f1", "groups", "flops"):
        assert reports["ray"][key] == reports["local"][key], key


def test_a_node_killed_mid_job_is_retried_on_another_node(cluster, tmp_path):
    c, backend = cluster
    victim = c.add_node(**NODE, resources={"victim": 1})
    c.wait_for_nodes()
    first = _job(tmp_path, "count", "40", "--checkpoint", "c.json", "--delay", "0.1",
                 backend=backend, resources={"custom": {"victim": 1}})  # fmt: skip
    store = JobStore(tmp_path / "jobs.db")
    _until(lambda: (read_json(tmp_path / "c.json") if (tmp_path / "c.json").exists() else
                    {"value": 0})["value"] >= 8, 300, "the job to count to 8")  # fmt: skip
    c.add_node(**NODE, resources={"victim": 1})  # where Ray can retry it
    c.remove_node(victim, allow_graceful=False)
    job = wait(tmp_path, [first], timeout=600)[first]
    assert job["state"] == "done", job["error"]
    assert job["attempts"] == 2
    assert read_json(tmp_path / "c.json") == {"value": 40, "sum_sq": sum(i * i for i in range(41))}
    log = open(job["log_path"]).read()
    resumed = [int(line.split()[-1]) for line in log.splitlines() if line.startswith("resuming")]
    assert resumed[0] == 0 and resumed[1] >= 8  # the retry went on from the checkpoint
    steps = [m["step"] for m in store.metrics(first)]  # relayed to the driver's database
    # (what the lost node logged after its last relay went with it: at most one interval)
    assert set(range(1, 9)) | set(range(resumed[1] + 1, 41)) <= set(steps)
    assert (
        steps[-1] == 40 and f"=== job {first} retried by Ray on " in log and ": attempt 2 " in log
    )


def test_cancel_reaches_a_job_on_another_node(cluster, tmp_path):
    _, backend = cluster
    long = _job(tmp_path, "sleep", "60", backend=backend, resources={"custom": {"node_b": 1}})
    _until(lambda: JobStore(tmp_path / "jobs.db").peek(long)["state"] == "running", 300, "start")
    cancel(tmp_path, long, grace_s=60)  # not killed by pid: asked, through the relay
    job = wait(tmp_path, [long], timeout=120)[long]
    assert job["state"] == "cancelled" and job["message"] == "cancelled while running"
    assert "slept" not in Path(job["log_path"]).read_text()  # the step did not run to its end
    assert json.loads(json.dumps(job["resources"])) == {"custom": {"node_b": 1}}


RACE_ROUNDS = int(os.environ.get("GROUPTUNE_RACE_ROUNDS", "21"))  # 7 of each moment


def _processes_in(folder: Path) -> list[int]:
    """Pids of the processes whose working directory is `folder` (the job's cwd)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")) == folder:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture
def busy_relay(cluster):
    """A backend whose tasks report every 10 ms, so a task spends much of its time inside Ray
    calls: where Ray's own cancel (an interrupt of the task's main thread) used to be
    swallowed by Ray's signal check, and the job ran on to `done`."""
    from core.jobs.ray_backend import RayBackend
    from core.jobs.scheduler import dispatch

    c, _ = cluster
    backend = RayBackend(address=c.address, dispatch=dispatch, relay_interval_s=0.01)
    yield backend
    backend.shutdown()


def test_a_cancel_sticks_whenever_it_arrives(busy_relay, tmp_path):
    """Cancel at once after submit, while Ray starts the task (a random short delay), and
    while the step runs, in turn: every job ends cancelled, its step never finishes, its
    worker process is gone and its Ray task is over."""
    import random

    from core.jobs.database import pid_alive

    backend = busy_relay
    rng, store = random.Random(0), JobStore(tmp_path / "jobs.db")
    for i in range(RACE_ROUNDS):
        moment = ("at once", "while starting", "while running")[i % 3]
        job_id = _job(tmp_path, "sleep", "60", backend=backend, resources={"custom": {"node_a": 1}})
        if moment == "while starting":
            time.sleep(rng.uniform(0.0, 1.5))
        elif moment == "while running":
            _until(lambda j=job_id: store.peek(j)["state"] == "running", 300, "the job to run")
        cancel(tmp_path, job_id, grace_s=60)
        job = wait(tmp_path, [job_id], timeout=120)[job_id]
        where = f"round {i} ({moment}): {job['state']} {job['message']!r}"
        assert job["state"] == "cancelled", where
        _until(lambda: backend.pending() == 0, 120, f"the Ray task to end, {where}")
        log = open(job["log_path"]).read() if Path(job["log_path"]).exists() else ""
        assert "slept" not in log, where
        if job["pid"]:
            _until(lambda p=job["pid"]: not pid_alive(p), 30, f"the worker to exit, {where}")
        _until(lambda: not _processes_in(tmp_path), 30, f"no worker left behind, {where}")
