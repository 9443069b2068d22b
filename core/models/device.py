"""Where and how a model runs: device, compute dtype, CPU threads per job."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from core import settings
from core.errors import ConfigError

if TYPE_CHECKING:
    pass


def pick_device(cfg_device: str | torch.device = "auto") -> torch.device:
    """`auto`: the current CUDA device if there is one, else CPU. `cuda` without CUDA raises."""
    if isinstance(cfg_device, torch.device):
        dev = cfg_device
    elif cfg_device in (None, "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(cfg_device)
        except (RuntimeError, TypeError):
            raise ConfigError(
                f"field 'model.device': {cfg_device!r} is not a device (auto, cpu, cuda)"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "field 'model.device': 'cuda' was asked for but no CUDA device is available "
                "(use 'auto' or 'cpu')"
            )
        # A concrete index, so device_map={"": device} and .to(device) agree.
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        dev = torch.device("cuda", index)
    return dev


def _cuda_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        try:  # emulated bf16 on old GPUs is slow: ask for native support only
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            return torch.cuda.is_bf16_supported()


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(
    cfg_dtype: str | torch.dtype = "auto", device: torch.device | None = None
) -> torch.dtype:
    """Compute dtype. `auto`: bfloat16 on a CUDA device with native bf16, else float32."""
    if isinstance(cfg_dtype, torch.dtype):
        return cfg_dtype
    if cfg_dtype in (None, "auto"):
        device = device if device is not None else pick_device("auto")
        return torch.bfloat16 if device.type == "cuda" and _cuda_bf16(device) else torch.float32
    if cfg_dtype not in _DTYPES:
        raise ConfigError(
            f"field 'model.dtype': {cfg_dtype!r} is not one of auto, {', '.join(_DTYPES)}"
        )
    return _DTYPES[cfg_dtype]


def configure_cpu(threads: int | None = None) -> int:
    """Set up torch for CPU work; return the number of threads in use.

    Flushing denormals to zero matters: without it CPU training steps were 10-15x slower and
    erratic (tiny LoRA/gradient values underflow into slow denormal arithmetic).
    """
    torch.set_flush_denormal(True)
    if threads is None:
        threads = _threads_per_job()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"field 'model.threads': must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _threads_per_job() -> int | None:
    """A job's torch threads: GROUPTUNE_THREADS (the runner sets it from the CPUs the job was
    given). Else, with GROUPTUNE_MAX_JOBS > 1 jobs side by side, each takes its share of the
    cores, as two jobs of all-core torch threads each ran 5-10x slower on 2 cores."""
    given = settings.integer("GROUPTUNE_THREADS", 0)
    if given > 0:
        return given
    jobs = settings.integer("GROUPTUNE_MAX_JOBS", 1)
    return max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
