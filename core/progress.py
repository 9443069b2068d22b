"""Progress of long work: a tqdm bar in the terminal, and the same numbers for the job system.

Stages call `track(total, desc)` and `.update(n)`; training also calls `log_metrics`. When the
process runs as a background job, `core.jobs` installs a reporter (`set_reporter`) that writes
fraction, ETA, message and metrics to the job database. The engine never knows which it is.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Protocol

from tqdm.auto import tqdm

from core import settings


class Reporter(Protocol):
    def progress(self, fraction: float, eta_s: float | None, message: str) -> None: ...

    def metrics(self, record: dict) -> None: ...


_reporter: Reporter | None = None


def set_reporter(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter


class _Stopwatch:
    """Wall time during which some stage work was open: bars nest, so it is their union."""

    def __init__(self):
        self.depth = 0
        self.since = 0.0
        self.seconds = 0.0

    def enter(self) -> None:
        if self.depth == 0:
            self.since = time.monotonic()
        self.depth += 1

    def leave(self) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.seconds += time.monotonic() - self.since


_compute = _Stopwatch()
_phases: dict[str, float] = {}


class computing(contextlib.ContextDecorator):
    """Marks a block (or, as a decorator, a function) as a stage's compute; every `track` is
    one. bench/e2e.py weighs it against the job's whole run time to find the start-up tax."""

    def __enter__(self) -> computing:
        _compute.enter()
        return self

    def __exit__(self, *exc) -> None:
        _compute.leave()


def add_time(phase: str, seconds: float) -> None:
    """Count `seconds` of this process towards `phase` (e.g. "model_load")."""
    _phases[phase] = _phases.get(phase, 0.0) + seconds


def timings() -> dict[str, float]:
    """Seconds of compute (open bars and `computing` blocks) and of each phase so far; the
    worker reports them once per job, and resets them (`reset_timings`) between jobs."""
    open_s = time.monotonic() - _compute.since if _compute.depth else 0.0
    return {"compute_s": round(_compute.seconds + open_s, 3)} | {
        f"{k}_s": round(v, 3) for k, v in _phases.items()
    }


def reset_timings() -> None:
    global _compute
    _compute = _Stopwatch()
    _phases.clear()


def _bars_enabled() -> bool:
    return not settings.switched_off("GROUPTUNE_PROGRESS")


class track:
    """A progress counter: `with track(100, "features") as p: ... p.update(16)`."""

    def __init__(self, total: int, desc: str = "", unit: str = "it"):
        self.total = max(int(total), 0)
        self.desc = desc
        self.done = 0
        self.start = time.monotonic()
        self._last_report = 0.0
        self._open = True
        _compute.enter()
        self._bar = tqdm(
            total=self.total, desc=desc, unit=unit, file=sys.stderr, disable=not _bars_enabled()
        )
        self._report("started", force=True)

    def update(self, n: int = 1, message: str | None = None) -> None:
        self.done += n
        self._bar.update(n)
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._report(message)

    @property
    def eta_s(self) -> float | None:
        if self.done <= 0 or self.total <= 0:
            return None
        elapsed = time.monotonic() - self.start
        return elapsed / self.done * (self.total - self.done)

    def _report(self, message: str | None, force: bool = False) -> None:
        if _reporter is None:
            return
        now = time.monotonic()
        if not force and now - self._last_report < 1.0 and self.done < self.total:
            return  # one database write a second is plenty for a progress bar
        self._last_report = now
        fraction = self.done / self.total if self.total else 0.0
        _reporter.progress(fraction, self.eta_s, f"{self.desc}: {message or ''}".rstrip(": "))

    def close(self) -> None:
        self._bar.close()
        self._report("finished", force=True)
        if self._open:
            self._open = False
            _compute.leave()

    def __enter__(self) -> track:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def log_metrics(record: dict) -> None:
    """Send one metrics record (e.g. {"step": 10, "loss": 0.7}) to the job, if any."""
    if _reporter is not None:
        _reporter.metrics(record)
