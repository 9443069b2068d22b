"""The `core.progress` reporter a worker installs: progress and metrics go to the job database.

Stages report as often as they like; the database sees at most one progress write and one
metrics batch per `min_interval_s`. What is held back is written by `flush()`, which the
heartbeat calls on every beat and the worker calls once more when the step ends.
"""

from __future__ import annotations

import threading
import time

from core.jobs.database import JobStore


class DbReporter:
    """Implements `core.progress.Reporter` for one job."""

    def __init__(self, store: JobStore, job_id: int, min_interval_s: float = 0.5):
        self.store = store
        self.job_id = job_id
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()  # called from the step's thread and the heartbeat's
        self._pending_progress: tuple | None = None
        self._pending_metrics: list[dict] = []
        self._last_progress = 0.0
        self._last_metrics = 0.0

    def progress(self, fraction: float, eta_s: float | None, message: str) -> None:
        with self._lock:
            self._pending_progress = (float(fraction), eta_s, message)
            if time.monotonic() - self._last_progress >= self.min_interval_s:
                self._write_progress()

    def metrics(self, record: dict) -> None:
        with self._lock:
            self._pending_metrics.append(dict(record))
            # a burst of records (one per step of a fast loop) goes in as one transaction
            if (
                time.monotonic() - self._last_metrics >= self.min_interval_s
                or len(self._pending_metrics) >= 200
            ):
                self._write_metrics()

    def flush(self) -> None:
        """Write whatever is held back."""
        with self._lock:
            if self._pending_progress is not None:
                self._write_progress()
            if self._pending_metrics:
                self._write_metrics()

    def _write_progress(self) -> None:
        fraction, eta_s, message = self._pending_progress
        self._pending_progress = None
        self._last_progress = time.monotonic()
        self.store.update_progress(self.job_id, fraction, eta_s, message)

    def _write_metrics(self) -> None:
        records, self._pending_metrics = self._pending_metrics, []
        self._last_metrics = time.monotonic()
        self.store.append_metrics(self.job_id, records)
