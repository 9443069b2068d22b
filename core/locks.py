"""One writer per artifact: a lock file per gradient store, adapter folder and workspace-level
result, held by whoever writes it (a job, a CLI step, the dashboard).

A second writer waits, saying once who holds the lock (pid, host, job id, since when), and
then usually finds the artifact finished and skips it. The locks are `filelock`'s (fcntl on
POSIX, which also works on most network file systems): the operating system releases a
lock when its holder dies, so the lock of a crashed process is taken over at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from core import settings

WAIT_NOTICE_S = 2.0  # wait this long before saying who holds the lock


def lock_path(ws_root: Path, kind: str, name: str) -> Path:
    """<workspace>/locks/<kind>-<name>.lock (outside the artifact, which may be replaced)."""
    return Path(ws_root) / "locks" / f"{kind}-{name}.lock"


def holder(lock: Path) -> dict | None:
    """Who holds (or last held) `lock`: {"pid", "host", "job", "since"}, if it said so."""
    try:
        return json.loads(Path(f"{lock}.holder").read_text())
    except (OSError, ValueError):
        return None


def describe(info: dict | None) -> str:
    if not info:
        return "another process"
    job = f", job {info['job']}" if info.get("job") else ""
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')}{job}, since {since}"


@contextlib.contextmanager
def artifact_lock(lock: Path, what: str, log=None):
    """Hold `lock` while writing `what`; wait for another holder (saying who, once)."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    fl = FileLock(str(lock))
    try:
        fl.acquire(timeout=WAIT_NOTICE_S)
    except Timeout:
        say(f"waiting for {what}: it is being written by {describe(holder(lock))}")
        fl.acquire()
    sidecar = Path(f"{lock}.holder")
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "job": settings.text("GROUPTUNE_JOB_ID"),
        "since": time.time(),
    }
    try:
        sidecar.write_text(json.dumps(me))
        yield
    finally:
        with contextlib.suppress(OSError):
            if holder(lock) == me:
                sidecar.unlink()
        fl.release()
