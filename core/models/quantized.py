"""A cache of 4-bit base models, so that only the first job quantises.

bitsandbytes quantises while `from_pretrained` loads the weights. For SmolLM2-135M on 2 CPU
cores that takes 2-5 s, and every job paid it. Its 4-bit weights (with their quant states)
serialise through `save_pretrained` and load back bit for bit (tests/test_models.py) in
0.77 s instead of 2.34 s (bench/quantized_load.py). There is one folder per model fingerprint, device kind and library
versions, under `cache_dir()/quantized/`, published with an atomic rename.

A folder that fails to load is rebuilt. `GROUPTUNE_QUANTIZED_CACHE=0` turns the cache off.
8-bit models are not cached: nothing here has checked that they round-trip.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from core import settings
from core.locks import artifact_lock
from core.models.fingerprint import model_fingerprint
from core.models.provision import publish_folder
from core.models.registry import cache_dir

if TYPE_CHECKING:
    from core.config import ModelConfig


def cache_folder(model_cfg: ModelConfig, device) -> Path | None:
    """Where this model's quantised weights are cached; None when they are not cacheable
    (no 4-bit, the cache turned off, or weights whose version cannot be told)."""
    if model_cfg.quantization != "4bit" or settings.switched_off("GROUPTUNE_QUANTIZED_CACHE"):
        return None
    fp = model_fingerprint(model_cfg)
    if fp["path"].startswith("hub:") and fp["weights"] is None:
        return None  # a Hub model whose commit is unknown: a cache could go stale unseen
    import bitsandbytes
    import torch
    import transformers

    key = {
        **fp,
        "device": str(device).split(":")[0],
        "versions": [torch.__version__, transformers.__version__, bitsandbytes.__version__],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_cfg.name)[-48:]
    return cache_dir() / "quantized" / f"{stem}-4bit-{digest}"


def load_cached(folder: Path, **kwargs):
    """The cached model in `folder`, or None when there is none or it does not load."""
    from transformers import AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        return None
    try:
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except Exception as exc:  # a damaged folder must not stop the job: quantise again
        print(
            f"[grouptune] quantised cache {folder} does not load ({exc!r}); rebuilding it",
            file=sys.stderr,
        )
        shutil.rmtree(folder, ignore_errors=True)
        return None


def save_cached(folder: Path, model) -> None:
    """Write a freshly quantised model (before any forward) to `folder`, atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with artifact_lock(folder.parent / f".{folder.name}.lock", f"the quantised cache {folder}"):
        if (folder / "config.json").is_file():
            return  # another process wrote it meanwhile
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            model.save_pretrained(tmp)
            publish_folder(tmp, folder)  # readable by others, like the model cache itself
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
