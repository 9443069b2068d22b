"""core.locks: one writer per artifact, tested with real `grouptune` processes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, write_tiny_experiment

from core.locks import artifact_lock, holder, lock_path


class Writer:
    """A `grouptune` process whose stderr is read as it comes, to wait on what it says."""

    def __init__(self, *argv: str):
        cmd = [sys.executable, "-m", "core.cli", *argv, "--json"]
        env = {**os.environ, "GROUPTUNE_PROGRESS": "0"}
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)

    def says(self, text: str, timeout: float = 300) -> None:
        """Wait until the process has written `text` (while it is still running)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.err):
            assert self.proc.poll() is None, "".join(self.err)[-3000:]
            assert time.monotonic() < deadline, f"never said {text!r}: {''.join(self.err)}"
            time.sleep(0.05)

    def done(self) -> tuple[dict, str]:
        out = self.proc.stdout.read()
        assert self.proc.wait(timeout=600) == 0, "".join(self.err)[-3000:]
        self._reader.join(timeout=60)
        return json.loads(out), "".join(self.err)


def _gradients(config, ws) -> Writer:
    return Writer("gradients", "--config", str(config), "--workspace", str(ws))


def _train(config, ws) -> Writer:
    return Writer("train", "--config", str(config), "--workspace", str(ws), "--adapter", "baseline")


def _held(ws, kind: str, names) -> contextlib.ExitStack:
    """The test itself holds these artifacts' locks (as another writer would)."""
    stack = contextlib.ExitStack()
    for name in names:
        stack.enter_context(artifact_lock(lock_path(ws, kind, name), f"{kind} {name}"))
    return stack


TASKS = ("reviews_a", "reviews_b", "topics")


def test_a_second_writer_waits_for_the_holder_and_skips_what_it_finished(tmp_path):
    config, ws = write_tiny_experiment(tmp_path), tmp_path / "ws"
    lock = lock_path(ws, "features", "topics")
    with artifact_lock(lock, "the gradient store of topics"):  # this test holds one store
        assert holder(lock)["pid"] == os.getpid()
        writer = _gradients(config, ws)
        writer.says(
            f"waiting for the gradient store of topics: it is being written by pid {os.getpid()}"
        )
    result, _ = writer.done()
    assert {t: r["rows_computed"] for t, r in result.items()} == dict.fromkeys(result, 24)
    assert holder(lock) is None  # released and cleaned up


def test_two_gradients_at_once_compute_each_store_once(tmp_path):
    """The race of issue 16: both used to write the same store; one died in FeatureStore.
    Both writers are made to overlap: each has found every store missing and waits on the
    first lock (held here) when the race starts."""
    config, ws = write_tiny_experiment(tmp_path), tmp_path / "ws"
    with _held(ws, "features", TASKS):
        first, second = _gradients(config, ws), _gradients(config, ws)
        for writer in (first, second):
            writer.says("waiting for the gradient store of reviews_a")
    (a, _), (b, _) = first.done(), second.done()
    for task in a:
        assert a[task]["status_before"] == b[task]["status_before"] == "missing"
        assert a[task]["rows_computed"] + b[task]["rows_computed"] == 24, task
    again, _ = _gradients(config, ws).done()
    assert all(r["status_before"] == "fresh" for r in again.values())


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    from filelock import FileLock

    lock = tmp_path / "locks" / "adapter-x.lock"
    code = (
        "import os, sys; sys.path.insert(0, '.'); from core.locks import artifact_lock\n"
        f"with artifact_lock({str(lock)!r}, 'x'): os._exit(9)  # dies holding it"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 9
    assert holder(lock)["pid"] != os.getpid()  # it said so before dying
    free = FileLock(str(lock))
    assert free.acquire(blocking=False)  # no wait: the OS released the dead process's lock
    free.release()
    with artifact_lock(lock, "x"):
        assert holder(lock)["pid"] == os.getpid()


@pytest.mark.parametrize("kind", ["features", "adapter", "step"])
def test_lock_files_live_outside_the_artifact(tmp_path, kind):
    path = lock_path(tmp_path, kind, "a")
    assert path.parent == tmp_path / "locks" and path.name == f"{kind}-a.lock"


def test_two_trains_of_one_adapter_at_once_make_it_once(tmp_path):
    config, ws = write_tiny_experiment(tmp_path), tmp_path / "ws"
    _gradients(config, ws).done()
    with _held(ws, "adapter", ["baseline"]):  # both start, then race for it when let go
        writers = [_train(config, ws) for _ in range(2)]
        for writer in writers:
            writer.says("waiting for adapter baseline")
    (a, err_a), (b, err_b) = (w.done() for w in writers)
    assert a["baseline"] == b["baseline"]  # the second one found the first's finished adapter
    assert "Traceback" not in err_a + err_b
    lines = (ws / "adapters" / "baseline" / "metrics.jsonl").read_text().splitlines()
    steps = [r["step"] for r in map(json.loads, lines) if r["kind"] == "step"]
    assert steps == sorted(set(steps))  # one run's steps, written once
