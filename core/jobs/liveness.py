"""Is a worker alive? Heartbeat settings and process checks on this host."""

from __future__ import annotations

import os
import socket

from core import settings

HOST = socket.gethostname()


def heartbeat_interval() -> float:
    """Seconds between worker heartbeats: env GROUPTUNE_HEARTBEAT_S (tests use ~0.2), else 2."""
    return settings.number("GROUPTUNE_HEARTBEAT_S", 2.0)


def pid_alive(pid: int | None) -> bool:
    """True if process `pid` exists on this host and is not a zombie."""
    if not pid:
        return False
    try:
        # A worker we spawned and that died is a zombie until reaped; reaping it here (when it is
        # our child) is what lets the submitting process itself notice its dead worker.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def claimer_dead(claimed_by: str) -> bool:
    """True if the dispatcher `host:pid` that claimed a job ran here and has exited."""
    host, _, pid = claimed_by.rpartition(":")
    return host == HOST and pid.isdigit() and not pid_alive(int(pid))
