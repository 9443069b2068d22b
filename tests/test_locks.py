"""core.locks: one writer per artifact, tested with real `grouptune` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, write_tiny_experiment

from core.locks import artifact_lock, holder, lock_path


def _gradients(config, ws) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "core.cli", "gradients", "--config", str(config)]
    cmd += ["--workspace", str(ws), "--json"]
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _done(proc) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out), err


def test_a_second_writer_waits_for_the_holder_and_skips_what_it_finished(tmp_path):
    config, ws = write_tiny_experiment(tmp_path), tmp_path / "ws"
    lock = lock_path(ws, "features", "topics")
    with artifact_lock(lock, "the gradient store of topics"):  # this test holds one store
        assert holder(lock)["pid"] == os.getpid()
        proc = _gradients(config, ws)
        time.sleep(8)  # it computes the others and waits for this one
        assert proc.poll() is None
    result, err = _done(proc)
    assert (
        f"waiting for the gradient store of topics: it is being written by pid {os.getpid()}" in err
    )
    assert {t: r["rows_computed"] for t, r in result.items()} == dict.fromkeys(result, 24)
    assert holder(lock) is None  # released and cleaned up


def test_two_gradients_at_once_compute_each_store_once(tmp_path):
    """The race of issue 16: both used to write the same store; one died in FeatureStore."""
    config, ws = write_tiny_experiment(tmp_path), tmp_path / "ws"
    first = _gradients(config, ws)
    second = _gradients(config, ws)
    (a, _), (b, _) = _done(first), _done(second)
    for task in a:
        assert a[task]["rows_computed"] + b[task]["rows_computed"] == 24, task
    again, _ = _done(_gradients(config, ws))
    assert all(r["status_before"] == "fresh" for r in again.values())


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    lock = tmp_path / "locks" / "adapter-x.lock"
    code = (
        "import os, sys; sys.path.insert(0, '.'); from core.locks import artifact_lock\n"
        f"with artifact_lock({str(lock)!r}, 'x'): os._exit(9)  # dies holding it"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 9
    assert holder(lock)["pid"] != os.getpid()  # it said so before dying
    start = time.monotonic()
    with artifact_lock(lock, "x"):
        assert holder(lock)["pid"] == os.getpid()
    assert time.monotonic() - start < 2  # no wait: the OS released the dead process's lock


@pytest.mark.parametrize("kind", ["features", "adapter", "step"])
def test_lock_files_live_outside_the_artifact(tmp_path, kind):
    path = lock_path(tmp_path, kind, "a")
    assert path.parent == tmp_path / "locks" and path.name == f"{kind}-a.lock"


def test_two_trains_of_one_adapter_at_once_make_it_once(tmp_path):
    config, ws = write_tiny_experiment(tmp_path), tmp_path / "ws"
    _done(_gradients(config, ws))
    cmd = [sys.executable, "-m", "core.cli", "train", "--config", str(config)]
    cmd += ["--workspace", str(ws), "--adapter", "baseline", "--json"]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    (a, err_a), (b, err_b) = (_done(p) for p in procs)
    assert a["baseline"] == b["baseline"]  # the second one found the first's finished adapter
    assert "Traceback" not in err_a + err_b
    lines = (ws / "adapters" / "baseline" / "metrics.jsonl").read_text().splitlines()
    steps = [r["step"] for r in map(json.loads, lines) if r["kind"] == "step"]
    assert steps == sorted(set(steps))  # one run's steps, written once
