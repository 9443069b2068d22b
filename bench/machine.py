"""The machine and library versions a benchmark ran on (saved beside its results)."""

from __future__ import annotations

import os
import platform


def machine_info() -> dict:
    import peft
    import torch
    import transformers

    try:  # absent on some GPU machines (bench/gpu.py runs there)
        import bitsandbytes

        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bnb,
    }
