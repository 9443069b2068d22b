"""A worker's heartbeat thread: proves the worker is alive and notices a request to stop.

Every `interval_s` it records a heartbeat, flushes held-back progress, and reads the job's
`cancel_requested` flag. When the flag is set it calls `on_cancel` once; the worker uses that
to interrupt its main thread (the step), which then stops at once, even inside a sleep.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from core.jobs.database import JobStore
from core.jobs.reporter import DbReporter


class Heartbeat(threading.Thread):
    def __init__(
        self,
        store: JobStore,
        job_id: int,
        interval_s: float,
        reporter: DbReporter | None = None,
        on_cancel: Callable[[], None] | None = None,
    ):
        super().__init__(name=f"grouptune-heartbeat-{job_id}", daemon=True)
        self.store = store
        self.job_id = job_id
        self.interval_s = interval_s
        self.reporter = reporter
        self.on_cancel = on_cancel
        self.cancel_seen = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                if self.reporter is not None:
                    self.reporter.flush()
                cancel = self.store.beat(self.job_id)
            except Exception as exc:  # a locked or busy database must not kill the worker
                print(f"[grouptune] heartbeat failed: {exc!r}", file=sys.stderr, flush=True)
                continue
            if cancel and not self.cancel_seen.is_set():
                self.cancel_seen.set()
                if self.on_cancel is not None:
                    self.on_cancel()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=max(5.0, 2 * self.interval_s))

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
