"""Benchmark: the CPU fast path against the straightforward path, side by side in one run.

Paths (SmolLM2-135M, the quick config's adapter: LoRA r=4 on q,k,v of the top 8 of 30 layers):
  reference     4-bit NF4 base, float32 compute, every prompt through all 30 layers
  prefix        + the frozen-prefix cache (core.models.prefix): the 22 frozen lower layers computed
                once per prompt and saved; every later pass runs the top 8 layers only
  prefix+bf16   + bfloat16 compute (the CPU has AVX512-BF16), the quick_distinct.yaml default
  bf16          bfloat16 compute alone (all layers), to separate the two effects

For each path, in a fresh workspace, with the engine's public functions:
  features   extract_features on the tasks (train + val): builds the train/val states first
  train      train_adapter, one epoch on the tasks, then its validation pass (the first job
             after features: its states are on disk)
  zero-shot  evaluate_zero_shot on the test splits (builds the test states)
  retrain    a second adapter (another training seed), as every later job sees it (all states
             on disk)
Stage times include each job's model load (a job loads once). The cache build is reported
separately from accounting.json's prefix_cache stage. Agreement with the reference: features
(correlation of h and g, relative difference of g), zero-shot and trained val metrics.

What-if: WhatIf.predict for new partitions (one group refit each) on 10 and 100 tasks of
random features with the quick config's shapes (k = 400, 48 train / 40 val rows, 2-4 choices),
and on the real features of the demo workspace.

Writes bench/results/fastpath.json.

    .venv/bin/python bench/fastpath.py [--tasks yelp snli] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PATHS = {
    "reference": {"dtype": "float32", "cache": False},
    "prefix": {"dtype": "float32", "cache": True},
    "prefix+bf16": {"dtype": "bfloat16", "cache": True},
    "bf16": {"dtype": "bfloat16", "cache": False},
}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_config(args, path: str):
    from core.config import load_config

    cfg = load_config(ROOT / "sample_data" / "quick_distinct.yaml")
    p = PATHS[path]
    return cfg.model_copy(
        update={
            "tasks": [t for t in cfg.tasks if t.name in args.tasks],
            "model": cfg.model.model_copy(update={"dtype": p["dtype"], "threads": args.threads}),
            "adapter": cfg.adapter.model_copy(update={"cache_lower_layers": p["cache"]}),
            "training": cfg.training.model_copy(update={"epochs": 1}),
        }
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 2)


def run_path(args, path: str) -> dict:
    from core.gradients.extract import extract_features
    from core.gradients.store import load_features
    from core.train.evaluation import evaluate_zero_shot
    from core.train.trainer import train_adapter
    from core.workspace import Workspace

    cfg = make_config(args, path)
    folder = ROOT / "workspaces" / f"bench-fastpath-{path}"
    shutil.rmtree(folder, ignore_errors=True)
    ws = Workspace(folder).ensure()
    say(f"[{path}] features")
    _, t_feat = timed(lambda: extract_features(cfg, ws))
    say(f"[{path}] train")
    rec, t_train = timed(lambda: train_adapter(cfg, ws, "a", args.tasks, progress=False))
    say(f"[{path}] zero-shot")
    zs, t_zs = timed(lambda: evaluate_zero_shot(cfg, ws, force=True))
    say(f"[{path}] retrain")
    # another training seed: the same recipe would be copied from "a" (core.train.twins.find_twin)
    cfg_b = cfg.model_copy(update={"training": cfg.training.model_copy(update={"seed": 1})})
    rec2, t_retrain = timed(lambda: train_adapter(cfg_b, ws, "b", args.tasks, progress=False))
    acct = ws.read("accounting.json", default={}).get("prefix_cache", {})
    feats = {t: load_features(ws, t) for t in args.tasks}
    out = {
        "settings": PATHS[path],
        "seconds": {
            "features": t_feat,
            "train": t_train,
            "zero_shot": t_zs,
            "retrain": t_retrain,
            "total": round(t_feat + t_train + t_zs + t_retrain, 2),
        },
        "cache_build_seconds": round(acct.get("wall_seconds", 0.0), 2),
        "cache_rows": acct.get("examples", 0),
        "cache_megabytes": round(
            sum(f.stat().st_size for f in folder.rglob("cache/prefix/*/*.npy")) / 2**20, 1
        ),
        "train_steps": rec["accounting"].get("steps") if "accounting" in rec else None,
        "val_trained": rec["val_metrics"]["mean"],
        "zero_shot": zs["mean"],
    }
    return out, feats


def agreement(feats: dict, ref: dict) -> dict:
    """How far a path's features are from the reference's, per task, worst case."""
    worst = {"h_corr": 1.0, "g_corr": 1.0, "g_rel_diff": 0.0, "val_z_max_abs": 0.0}
    for task, tf in feats.items():
        r = ref[task]
        h, rh = np.asarray(tf.train_h, float), np.asarray(r.train_h, float)
        g, rg = np.asarray(tf.train_g, float).ravel(), np.asarray(r.train_g, float).ravel()
        worst["h_corr"] = min(worst["h_corr"], float(np.corrcoef(h, rh)[0, 1]))
        worst["g_corr"] = min(worst["g_corr"], float(np.corrcoef(g, rg)[0, 1]))
        rel = float(np.linalg.norm(g - rg) / np.linalg.norm(rg))
        worst["g_rel_diff"] = max(worst["g_rel_diff"], rel)
        z = float(np.abs(np.asarray(tf.val_z) - np.asarray(r.val_z)).max())
        worst["val_z_max_abs"] = max(worst["val_z_max_abs"], z)
    return {k: round(v, 6) for k, v in worst.items()}


# --- what-if ----------------------------------------------------------------------------------


def random_features(n_tasks: int, seed: int = 0) -> dict:
    from core.gradients.store import TaskFeatures

    rng = np.random.default_rng(seed)
    out = {}
    for t in range(n_tasks):
        C, k, n_tr, n_va = int(rng.integers(2, 5)), 400, 48, 40
        z = rng.normal(size=(n_va, C)).astype("f4")
        out[f"t{t}"] = TaskFeatures(
            train_h=rng.normal(size=n_tr).astype("f4"),
            train_g=rng.normal(size=(n_tr, k)).astype("f4"),
            train_gold=rng.integers(0, C, n_tr),
            val_z=z,
            val_lse=(np.log(np.exp(z).sum(1)) + 3).astype("f4"),
            val_h=rng.normal(size=n_va).astype("f4"),
            val_G=rng.normal(size=(n_va, C, k)).astype("f4") * 0.1,
            val_Glse=None,
            val_gold=rng.integers(0, C, n_va),
            target="choices",
            k=k,
            meta={},
        )
    return out


def whatif_timing(features: dict, label: str, max_norm: float, repeats: int = 7) -> dict:
    """Median time of predict() for a partition that needs fits (a fresh WhatIf, all groups fitted),
    and for a one-task move (two groups refitted)."""
    from core.estimate.whatif import WhatIf

    names = list(features)
    m = max(2, round(len(names) ** 0.5))
    groups = [names[i::m] for i in range(m)]
    cold, move = [], []
    for r in range(repeats):
        wi = WhatIf(features, max_norm=max_norm)
        _, t = timed(lambda wi=wi: wi.predict(groups))
        cold.append(t)
        moved = [list(g) for g in groups]
        task = moved[r % m].pop(0)
        moved[(r + 1) % m].append(task)
        moved = [g for g in moved if g]
        start = time.perf_counter()
        wi.predict(moved)
        move.append(time.perf_counter() - start)
    return {
        "features": label,
        "tasks": len(names),
        "groups": m,
        "full_partition_ms": round(1000 * float(np.median(cold)), 1),
        "move_one_task_ms": round(1000 * float(np.median(move)), 1),
    }


def run_whatif() -> list[dict]:
    from core.workspace import Workspace

    rows = [whatif_timing(random_features(n), "random, quick shapes", 0.1) for n in (10, 100)]
    demo = Workspace(ROOT / "sample_data" / "workspaces" / "quick")
    if demo.config_path.exists():
        from core.gradients.store import load_features

        cfg = demo.load_config()
        feats = {n: load_features(demo, n) for n in cfg.task_names}
        rows.append(whatif_timing(feats, "real, demo workspace", cfg.estimator.max_norm))
    return rows


def main() -> None:
    from machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["yelp", "snli"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--skip-whatif", action="store_true")
    args = ap.parse_args()
    started = time.time()
    results, feats = {}, {}
    for path in args.paths:
        results[path], feats[path] = run_path(args, path)
        say(json.dumps(results[path]["seconds"]))
    ref = results.get("reference")
    for path, res in results.items():
        if ref is not None:
            res["speedup_vs_reference"] = {
                k: round(ref["seconds"][k] / v, 2) for k, v in res["seconds"].items() if v
            }
            res["agreement_with_reference"] = agreement(feats[path], feats["reference"])
    out = {
        "command": "python bench/fastpath.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "tasks": args.tasks,
        "threads": args.threads,
        "wall_seconds": round(time.time() - started, 1),
        "paths": results,
        "whatif": [] if args.skip_whatif else run_whatif(),
    }
    dest = ROOT / "bench" / "results" / "fastpath.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
