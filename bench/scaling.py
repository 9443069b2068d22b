"""Benchmark: where exact (identity) features stop fitting, and what a sketch costs instead.

The estimate replays the training recipe on stored per-row gradient features (core.estimate.replay).
With the identity projection a row holds D floats per answer word (D = the adapter's LoRA-B
entries), and each replayed step and val scoring is O(D); with a CountSketch the same is O(k).
This bench measures both on synthetic features shaped like real adapters (LoRA r = 4 on q, k, v):

  smollm2-135m top 8 layers   D =  30,720   (GroupTune's presets)
  smollm2-135m all 30 layers  D = 115,200
  llama-3.2-1b all 16 layers  D = 196,608
  llama-3.1-8b all 32 layers  D = 786,432

For each: the store's bytes per train row and per val row (2 answer words), and the seconds of
one replay of a 3-task subset (2 epochs, batch 8, its val scoring included) at several row
counts, against the same with CountSketch k = 4096 features. It writes
bench/results/scaling.json; `features.projection: auto` (core.config) switches to the sketch
above IDENTITY_MAX_DIMS, and README says where the line is.

    .venv/bin/python bench/scaling.py [--rows 100 300] [--shapes ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    "smollm2-135m, top 8 layers": (8, 576, 192),
    "smollm2-135m, all 30 layers": (30, 576, 192),
    "llama-3.2-1b, all 16 layers": (16, 2048, 512),
    "llama-3.1-8b, all 32 layers": (32, 4096, 1024),
}
R = 4  # LoRA rank of the presets
VAL_ROWS, CHOICES, TASKS = 50, 2, 3


def dims(layers: int, q_out: int, kv_out: int) -> int:
    """LoRA-B entries of q, k, v (out x r each) over the adapted layers."""
    return layers * (q_out + 2 * kv_out) * R


def task(rng, k: int, rows: int):
    from core.gradients.store import TaskFeatures

    scale = 1.0 / np.sqrt(k)
    return TaskFeatures(
        train_h=rng.normal(-0.3, 1, rows),
        train_g=(rng.standard_normal((rows, k), dtype=np.float32) * scale),
        train_gold=rng.integers(0, CHOICES, rows),
        val_z=rng.normal(0, 1, (VAL_ROWS, CHOICES)),
        val_lse=np.zeros(VAL_ROWS),
        val_h=np.zeros(VAL_ROWS),
        val_G=(rng.standard_normal((VAL_ROWS, CHOICES, k), dtype=np.float32) * scale),
        val_Glse=None,
        val_gold=rng.integers(0, CHOICES, VAL_ROWS),
        target="choices",
        k=k,
        meta={},
    )


def replay_seconds(k: int, rows: int, repeats: int) -> float:
    """Median seconds of one replay of a TASKS-task subset with k-dim features."""
    from core.config import TrainingConfig
    from core.estimate.replay import replay

    rng = np.random.default_rng(0)
    feats = [task(rng, k, rows) for _ in range(TASKS)]
    tcfg = TrainingConfig(epochs=2, patience=None, lr=5e-4, batch_size=8)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        replay(feats, tcfg)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def row_bytes(k: int) -> dict:
    """Bytes a feature store keeps per row (float32; core.gradients.store's layout)."""
    return {"train_row": 4 * (k + 1), "val_row": 4 * CHOICES * (k + 1)}


def main() -> None:
    from bench.machine import machine_info
    from core.config import AUTO_SKETCH_K, IDENTITY_MAX_DIMS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[100, 300])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scaling.json")
    args = p.parse_args()
    results = []
    sketch = {rows: replay_seconds(AUTO_SKETCH_K, rows, args.repeats) for rows in args.rows}
    for name, shape in SHAPES.items():
        D = dims(*shape)
        for rows in args.rows:
            exact = replay_seconds(D, rows, args.repeats)
            results.append(
                {
                    "shape": name,
                    "D": D,
                    "rows_per_task": rows,
                    "identity_seconds": exact,
                    "sketch_seconds": sketch[rows],
                    "ratio": exact / sketch[rows],
                    "identity_bytes": row_bytes(D),
                    "sketch_bytes": row_bytes(AUTO_SKETCH_K),
                    "auto": "identity" if D <= IDENTITY_MAX_DIMS else "countsketch",
                }
            )
            print(f"{name:30} D={D:>8,} rows={rows:4}: identity {exact:7.3f} s, "
                  f"sketch {sketch[rows]:6.3f} s ({exact / sketch[rows]:5.1f}x); "
                  f"{row_bytes(D)['train_row'] / 2**10:7.0f} KiB a train row", flush=True)  # fmt: skip
    out = {
        "command": "python bench/scaling.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "settings": {
            "tasks_per_subset": TASKS,
            "epochs": 2,
            "batch_size": 8,
            "val_rows": VAL_ROWS,
            "choices": CHOICES,
            "r": R,
            "sketch_k": AUTO_SKETCH_K,
            "identity_max_dims": IDENTITY_MAX_DIMS,
        },  # fmt: skip
        "results": results,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
