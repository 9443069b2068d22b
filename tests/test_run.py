"""The headless pipeline as background jobs, and a training worker killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_tiny_experiment

from core.jobs import open_store, resume, submit, wait

ENV = {**os.environ, "GROUPTUNE_PROGRESS": "0", "GROUPTUNE_HEARTBEAT_S": "0.5"}


@pytest.fixture(autouse=True)
def _fast_heartbeat(monkeypatch):
    monkeypatch.setenv("GROUPTUNE_HEARTBEAT_S", "0.5")


def _grouptune_run(config, ws) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "core.cli", "run", str(config), "--workspace", str(ws), "--json"]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)


def test_run_completes_as_jobs_and_prints_the_report(tmp_path):
    config = write_tiny_experiment(tmp_path)
    ws = tmp_path / "ws"
    proc = _grouptune_run(config, ws)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report == json.loads((ws / "report.json").read_text())
    assert set(report["accuracy"]) == {"zero_shot", "baseline", "ensemble"}
    jobs = open_store(ws).list()
    assert jobs and all(j["state"] == "done" for j in jobs)
    steps = {j["step"] for j in jobs}
    assert {"affinity", "group", "train:baseline", "evaluate", "report"} <= steps
    assert json.loads((ws / "run.json").read_text())["wall_seconds"]["total"] > 0

    # a second run finds everything fresh: no gradient job, same report
    again = _grouptune_run(config, ws)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "gradients: 0 of 3 tasks to compute" in again.stderr
    assert json.loads(again.stdout)["accuracy"] == report["accuracy"]


def test_run_with_two_groups_two_jobs_at_once_and_the_jobs_commands(tmp_path):
    """m = 2 forced, two jobs at once: the group jobs finish in any order, and the manifest is
    made by the last of them (it once read an adapter another job had not written yet)."""
    config = write_tiny_experiment(tmp_path, grouping={"m": 2})
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "core.cli", "run", str(config), "--workspace", str(ws), "--json"]
    env = {**ENV, "GROUPTUNE_MAX_JOBS": "2"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert len(report["groups"]) == 2 and set(report["accuracy"]) >= {"baseline", "ensemble"}
    manifest = json.loads((ws / "ensemble.json").read_text())
    assert manifest["groups"] == report["groups"] and set(manifest["digests"]) == {
        "group-0",
        "group-1",
    }
    listed = subprocess.run(
        [sys.executable, "-m", "core.cli", "jobs", "list", "--workspace", str(ws), "--json"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)
    steps = {j["step"]: j["state"] for j in jobs}
    assert steps["train:group-0"] == steps["train:group-1"] == steps["report"] == "done"


def test_reused_workers_give_the_same_report_with_fewer_processes(tmp_path):
    reports, pids = {}, {}
    for reuse in (False, True):
        config = write_tiny_experiment(tmp_path / str(reuse), jobs={"reuse_workers": reuse})
        ws = tmp_path / str(reuse) / "ws"
        proc = _grouptune_run(config, ws)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports[reuse] = json.loads(proc.stdout)
        jobs = open_store(ws).list()
        assert jobs and all(j["state"] == "done" for j in jobs)
        pids[reuse] = [j["pid"] for j in jobs]
    for key in ("accuracy", "f1", "groups", "flops"):
        assert reports[True][key] == reports[False][key], key
    assert len(set(pids[False])) == len(pids[False])  # the default: a process per job
    assert len(set(pids[True])) < len(pids[True]) / 2  # mostly one chain


def test_the_baseline_waits_for_its_twin_when_jobs_run_at_once(tmp_path):
    """At m = 1 the one group adapter is the baseline's twin: with two jobs at once the
    baseline must still be copied from it, not trained again beside it."""
    config = write_tiny_experiment(tmp_path, grouping={"m": 1})
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "core.cli", "run", str(config), "--workspace", str(ws), "--json"]
    env = {**ENV, "GROUPTUNE_MAX_JOBS": "2"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {j["step"]: j for j in open_store(ws).list()}
    assert jobs["train:group-0"]["id"] in jobs["train:baseline"]["depends_on"]
    record = json.loads((ws / "adapters" / "baseline" / "grouptune.json").read_text())
    assert record["copied_from"] == "group-0"


def _train_job(ws, config) -> int:
    argv = ["train", "--config", str(config), "--workspace", str(ws), "--adapter", "baseline"]
    return submit(ws, "train baseline", "train:baseline", argv, cwd=ROOT)


def _adapter_weights(ws) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(ws / "adapters" / "baseline" / "adapter_model.safetensors"))


def test_killed_training_worker_resumes_to_the_same_result(tmp_path):
    overrides = {"training": {"epochs": 3, "batch_size": 4}}
    clean_cfg = write_tiny_experiment(tmp_path / "clean", **overrides)
    killed_cfg = write_tiny_experiment(tmp_path / "killed", **overrides)
    clean_ws, killed_ws = tmp_path / "clean" / "ws", tmp_path / "killed" / "ws"

    job = _train_job(killed_ws, killed_cfg)
    store = open_store(killed_ws)
    checkpoint = killed_ws / "adapters" / "baseline" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 600
    while not checkpoint.exists():  # wait for epoch 1's checkpoint, then kill mid-epoch 2
        assert time.monotonic() < deadline and store.get(job)["state"] == "running"
        time.sleep(0.05)
    os.kill(store.get(job)["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 300
    while store.get(job)["state"] == "running":  # noticed within a few beats
        assert time.monotonic() < deadline, "a dead worker was never noticed"
        time.sleep(0.1)
    assert store.get(job)["state"] == "failed"
    assert "no heartbeat" in store.get(job)["error"] or "exit" in store.get(job)["error"]

    resume(killed_ws, job)
    assert wait(killed_ws, [job], timeout=600)[job]["state"] == "done"
    log = Path(store.get(job)["log_path"]).read_text()  # the store keeps absolute paths
    assert "resum" in log.lower()

    clean = _train_job(clean_ws, clean_cfg)
    assert wait(clean_ws, [clean], timeout=600)[clean]["state"] == "done"
    a, b = _adapter_weights(killed_ws), _adapter_weights(clean_ws)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    meta = [
        json.loads((w / "adapters" / "baseline" / "grouptune.json").read_text())
        for w in (killed_ws, clean_ws)
    ]
    assert meta[0]["val_metrics"] == meta[1]["val_metrics"]
    assert meta[0]["best_epoch"] == meta[1]["best_epoch"]


# --- the quick demo's path: QLoRA, frozen-prefix cache, dropout, killed after a mid-epoch save --

QUICK_LIKE = {  # sample_data/quick.yaml on tiny-llama: 4-bit base, top layer only (prefix cache)
    "model": {"name": "tiny-llama", "quantization": "4bit"},
    "adapter": {"top_layers": 1, "dropout": 0.1},
    "training": {"epochs": 3, "batch_size": 4, "patience": None, "loss": "choices"},
}
STEPS_PER_EPOCH = 12  # 3 tasks x 16 rows / batch_size 4


def _run_artifacts(ws) -> dict:
    """What must be bit-identical between a killed-and-resumed and an uninterrupted run."""
    folder = ws / "adapters" / "baseline"
    meta = json.loads((folder / "grouptune.json").read_text())
    return {
        "weights": (folder / "adapter_model.safetensors").read_bytes(),
        "metrics": (folder / "metrics.jsonl").read_text(),
        "meta": {k: meta[k] for k in ("val_metrics", "history", "best_epoch", "steps")},
    }


def _read_checkpoint(ws) -> dict | None:
    path = ws / "adapters" / "baseline" / "checkpoint" / "state.json"
    try:
        return json.loads(path.read_text())["state"]
    except (OSError, ValueError):  # not there yet, or swapped out right now
        return None


def _kill_when(ws, job, ready) -> dict:
    """SIGKILL the job's worker once its checkpoint satisfies `ready`; wait until the store
    marks it failed. Returns the checkpoint the resume will start from."""
    store = open_store(ws)
    deadline = time.monotonic() + 300
    while not ready(_read_checkpoint(ws)):
        assert time.monotonic() < deadline and store.get(job)["state"] == "running"
        time.sleep(0.01)
    os.kill(store.get(job)["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while store.get(job)["state"] == "running":
        assert time.monotonic() < deadline, "the dead worker was never noticed"
        time.sleep(0.1)
    assert store.get(job)["state"] == "failed"
    return _read_checkpoint(ws)


@pytest.fixture(scope="module")
def quick_like_reference(tmp_path_factory) -> dict:
    """The uninterrupted run (default checkpoint interval: no mid-epoch checkpoints)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    config, ws = write_tiny_experiment(root, **QUICK_LIKE), root / "ws"
    job = _train_job(ws, config)
    assert wait(ws, [job], timeout=600)[job]["state"] == "done"
    return _run_artifacts(ws)


def _after_epoch_1(state) -> bool:
    return state is not None and state["epoch"] >= 1


def _mid_epoch(state) -> bool:  # epoch 2 (or 3, on a machine so loaded the poll missed it)
    return state is not None and state["epoch"] >= 1 and state["batch_in_epoch"] >= 3


@pytest.mark.parametrize(
    ("checkpoint_s", "ready"),
    [("600", _after_epoch_1), ("0", _mid_epoch)],
    ids=["after-epoch-checkpoint", "after-mid-epoch-checkpoint"],
)
def test_killed_qlora_prefix_worker_resumes_bit_identical(
    tmp_path, monkeypatch, quick_like_reference, checkpoint_s, ready
):
    """The quick demo's recipe, killed with SIGKILL after an end-of-epoch or a mid-epoch
    checkpoint and resumed as a job: the same adapter bytes, metrics.jsonl and val record."""
    monkeypatch.setenv("GROUPTUNE_CHECKPOINT_S", checkpoint_s)  # the worker inherits it
    config, ws = write_tiny_experiment(tmp_path, **QUICK_LIKE), tmp_path / "ws"
    job = _train_job(ws, config)
    resumed_from = _kill_when(ws, job, ready)
    assert resumed_from["epoch"] < 3 and resumed_from["step"] < 3 * STEPS_PER_EPOCH
    if checkpoint_s == "0":  # the resume really starts inside an epoch
        assert resumed_from["batch_in_epoch"] > 0
    assert not (ws / "adapters" / "baseline" / "grouptune.json").exists()

    resume(ws, job)
    assert wait(ws, [job], timeout=600)[job]["state"] == "done"
    log = Path(open_store(ws).get(job)["log_path"]).read_text()
    assert f"resuming from its checkpoint (epoch {resumed_from['epoch']}" in log
    assert "frozen-prefix cache off" not in log  # the cached path really ran
    got, want = _run_artifacts(ws), quick_like_reference
    assert got["meta"] == want["meta"]
    assert got["metrics"] == want["metrics"]
    assert got["weights"] == want["weights"]
