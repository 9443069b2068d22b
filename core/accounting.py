"""Cost accounting of each stage: wall time, peak memory, FLOPs, in accounting.json.

Torch-free (the dashboard and `grouptune report` read it); FLOPs are counted in core.models.flops.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from typing import Any

from core.errors import GroupTuneError
from core.io import read_json, write_json
from core.stages import COSTS

_SUMMED = ("flops", "wall_seconds", "tokens", "examples", "train_flops", "val_flops")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


class Meter:
    """Wall time and peak memory of a block: `with Meter(device) as m: ...; m.result()`.

    peak_memory_bytes is torch.cuda.max_memory_allocated on CUDA (reset on entry), else the
    process's peak RSS (which cannot be reset: it is the peak since the process started).
    """

    def __init__(self, device=None):
        self.device = str(device) if device is not None else "cpu"
        self.cuda = self.device.startswith("cuda")
        self.wall_seconds = 0.0
        self._start = 0.0

    def start(self) -> Meter:
        """Start measuring (what `with` does); read `elapsed()` and `peak_memory()` any time."""
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        self._start = time.perf_counter()
        return self

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.wall_seconds = time.perf_counter() - self._start

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def peak_memory(self) -> dict:
        out = {"peak_rss_bytes": peak_rss_bytes()}
        if self.cuda:
            import torch

            out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
        out["peak_memory_bytes"] = out.get("peak_cuda_bytes", out["peak_rss_bytes"])
        return out


# --- accounting.json --------------------------------------------------------------------------


def stage_entry(
    flops: int, wall_seconds: float, peak_memory_bytes: int, tokens: int, method: str, **extra
) -> dict:
    """One accounting record; extra keys (examples, flops_per_example, ...) are kept."""
    return {
        "flops": int(flops),
        "wall_seconds": float(wall_seconds),
        "peak_memory_bytes": int(peak_memory_bytes),
        "tokens": int(tokens),
        "method": str(method),
        **extra,
    }


@contextlib.contextmanager
def _locked(path):
    """Exclusive lock next to `path`, so parallel jobs (one per group) don't lose updates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: writes stay atomic, concurrent updates may be lost
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sum_parts(parts: dict[str, dict]) -> dict:
    """A stage's totals over its parts: sums of additive fields, max of peaks, methods joined."""
    total: dict[str, Any] = {}
    for key in _SUMMED:
        values = [p[key] for p in parts.values() if key in p]
        if values:
            total[key] = sum(values)
    peaks = [p.get("peak_memory_bytes", 0) for p in parts.values()]
    total["peak_memory_bytes"] = max(peaks) if peaks else 0
    total["method"] = "+".join(sorted({p.get("method", "?") for p in parts.values()}))
    if total.get("examples"):
        total["flops_per_example"] = total["flops"] / total["examples"]
    return total


class Accounting:
    """accounting.json of a workspace: per-stage cost records, updated atomically under a lock."""

    def __init__(self, ws):
        self.path = ws.path("accounting.json")

    def read(self) -> dict:
        try:
            return read_json(self.path) if self.path.exists() else {}
        except ValueError as err:
            raise GroupTuneError(f"{self.path}: not valid JSON ({err}); delete it") from None

    def stage(self, stage: str) -> dict | None:
        return self.read().get(stage)

    def record(self, stage: str, entry: dict, part: str | None = None) -> dict:
        """Store `entry` under `stage` (replacing it), or as `part` of it (totals recomputed)."""
        if stage not in COSTS:
            raise GroupTuneError(f"unknown accounting stage {stage!r}; expected one of {COSTS}")
        with _locked(self.path):
            data = self.read()
            if part is None:
                data[stage] = dict(entry)
            else:
                parts = dict(data.get(stage, {}).get("parts", {}))
                parts[part] = dict(entry)
                data[stage] = {**_sum_parts(parts), "parts": parts}
            write_json(self.path, data)
        return data[stage]
