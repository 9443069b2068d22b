"""Benchmark: gradient features on a sample of each task's train rows (the issue's FLOPs cut).

The features stage costs one forward and backward per train row, the biggest share of the
method's overhead counted the paper's way. Computed on a fraction f of each task's rows only,
how much does the estimate lose? Scored against real fine-tunes it was given nothing of: the
pairwise transfer matrix that bench/protocol.py --part pairs measured (five protocol tasks,
100 train rows a task, 3 training seeds; bench/results/protocol.json), on the same rows.

Two ways to use a sample of n_f = ceil(f * n) rows:
  sample      the estimator replays a fine-tune on the sampled rows only (fewer steps)
  stretched   each sampled row stands for 1/f rows: the sample is repeated (a fresh
              permutation each pass) up to n rows, so the replay takes the full run's steps
Each f is drawn with several sampling seeds; the figures are the mean and range over them.
FLOPs: the features' train-row FLOPs scale with f (one pass per row); RESULTS.md gives the
method's training FLOPs the paper's way at each f (`flops_by_fraction`: features on train rows
+ group adapters + boosting, over one adapter) from bench/results/protocol.json's headline runs.

    .venv/bin/python bench/sampled_features.py [--fractions 0.25 0.5 1] [--draws 3]
        [--workspace workspaces/bench-protocol-5]

The workspace must hold the five tasks' features at the pairs' caps (bench/protocol.py
--part headline --tasks ... --max-train 100 computes them). Writes
bench/results/sampled_features.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("GROUPTUNE_PROGRESS", "0")

TRAIN_FIELDS = ("train_h", "train_g", "train_gold", "train_z", "train_G")


def sampled(tf, fraction: float, rng, stretched: bool):
    """The task's features with a fraction of its train rows, in their stored order (so f = 1
    is the stored features), or repeated up to n when stretched."""
    n = len(tf.train_gold)
    keep = np.sort(rng.choice(n, size=max(1, math.ceil(fraction * n)), replace=False))
    if stretched:
        passes = math.ceil(n / len(keep))
        keep = np.concatenate([rng.permutation(keep) for _ in range(passes)])[:n]
    rows = {f: np.asarray(getattr(tf, f))[keep] for f in TRAIN_FIELDS if getattr(tf, f) is not None}
    return dataclasses.replace(tf, **rows)


def estimated(fit, feats: dict, tasks: list[str]) -> np.ndarray:
    """T[i, j] = i's predicted val loss alone − with j (bench/protocol.py's estimated matrix)."""
    from core.estimate.estimator import score

    alone = {t: score(feats[t], fit([feats[t]]))["loss"] for t in tasks}
    est = np.zeros((len(tasks), len(tasks)))
    for (i, a), (j, b) in combinations(enumerate(tasks), 2):
        both = fit([feats[a], feats[b]])
        est[i, j] = alone[a] - score(feats[a], both)["loss"]
        est[j, i] = alone[b] - score(feats[b], both)["loss"]
    return est


def main() -> None:
    from machine import machine_info
    from protocol import agreement

    from core.estimate.fitter import fitter
    from core.gradients.store import load_features
    from core.workspace import Workspace

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--workspace", type=Path, default=ROOT / "workspaces" / "bench-protocol-5")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "protocol.json")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sampled_features.json")
    args = p.parse_args()

    protocol = json.loads(args.results.read_text())
    pairs = protocol["parts"]["pairs"]
    tasks, real = pairs["tasks"], np.asarray(pairs["real_loss_transfer"]["mean"])
    ws = Workspace(args.workspace)
    cfg = ws.load_config()
    fit = fitter(cfg)
    full = {t: load_features(ws, t) for t in tasks}
    rows = {t: len(full[t].train_gold) for t in tasks}
    out = {"tasks": tasks, "train_rows": rows, "seeds": pairs["seeds"], "by_fraction": {}}
    for f in args.fractions:
        for how in ("sample", "stretched") if f < 1 else ("sample",):
            scores = []
            for draw in range(args.draws if f < 1 else 1):
                rng = np.random.default_rng(draw)
                feats = {t: sampled(full[t], f, rng, how == "stretched") for t in tasks}
                scores.append(agreement(estimated(fit, feats, tasks), real))
                print(f"[{time.strftime('%H:%M:%S')}] f={f} {how} draw {draw}: {scores[-1]}",
                      file=sys.stderr, flush=True)  # fmt: skip
            out["by_fraction"][f"{f:g}-{how}"] = summary(f, how, scores)
    out["provenance"] = {
        "command": "python bench/sampled_features.py " + " ".join(sys.argv[1:]),
        "workspace_config": cfg.model_dump(mode="json", exclude={"base_dir"}),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


def summary(f: float, how: str, scores: list[dict]) -> dict:
    corr = [s["correlation"] for s in scores if s["correlation"] is not None]
    sign = [s["sign_agreement"] for s in scores]
    return {
        "fraction": f,
        "how": how,
        "draws": len(scores),
        "correlation": float(np.mean(corr)) if corr else None,
        "correlation_range": [float(min(corr)), float(max(corr))] if corr else None,
        "sign_agreement": float(np.mean(sign)),
        "sign_agreement_range": [float(min(sign)), float(max(sign))],
    }


def flops_by_fraction(protocol: dict, fractions) -> dict | None:
    """The paper's-way training FLOPs ratio of the recommended m with the features' train-row
    FLOPs scaled by f (the rest unchanged), from the headline's runs; None before it ran."""
    head = protocol["parts"].get("headline") or {}
    rec = str((head.get("recommended") or {}).get("m"))
    runs = [r for r in head.get("runs", []) if str(r["m"]) == rec and "flops" in r]
    if not runs:
        return None
    out = {}
    for f in fractions:
        ratios = [
            (
                f * r["flops"]["features_train"]
                + r["flops"]["group_training"]
                + r["flops"]["boosting"]
            )
            / r["flops"]["baseline_training"]
            for r in runs
        ]
        out[f"{f:g}"] = float(np.mean(ratios))
    return out


if __name__ == "__main__":
    main()
