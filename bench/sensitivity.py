"""Benchmark: how the estimation error of bench/claims.py moves with the recipe and trust region.

The claims run (workspaces/bench-claims) fine-tunes K estimated subsets with the group adapters'
recipe and compares them with the estimator. Here the same K subsets are compared again under
other settings, each in its own workspace that shares the claims run's features and cached
states (hard links) and, where the training recipe is unchanged, its fine-tuned adapters:
  estimator.max_norm   the trust region of the estimated update (re-estimation only: seconds)
  training.lr          the fine-tuning learning rate (K new real fine-tunes)
Each variant runs the product's own steps: core.pipeline.affinity, then
core.validate.validation.validate_estimate (inline).

Writes bench/results/sensitivity.json; bench/claims.py puts it in bench/RESULTS.md.

    .venv/bin/python bench/sensitivity.py [--subsets 8]   # after bench/claims.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CLAIMS = ROOT / "workspaces" / "bench-claims"
HERE = ROOT / "workspaces" / "bench-sensitivity"
# label -> (config overrides, variant whose adapters it can reuse: same training recipe)
VARIANTS = {
    "lr 5e-4, max_norm 0.1 (claims run)": ({}, None),
    "lr 5e-4, max_norm 1": ({"estimator": {"max_norm": 1.0}}, None),
    "lr 5e-4, max_norm 10": ({"estimator": {"max_norm": 10.0}}, None),
    "lr 5e-5 (paper), max_norm 0.1": ({"training": {"lr": 5e-5}}, "fresh"),
    "lr 5e-5 (paper), max_norm 1": (
        {"training": {"lr": 5e-5}, "estimator": {"max_norm": 1.0}},
        "lr 5e-5 (paper), max_norm 0.1",
    ),
}
SUMMARY = (
    "mean_loss_rel_error",
    "mean_accuracy_abs_error",
    "loss_correlation",
    "mean_predicted_loss_drop",
    "mean_real_loss_drop",
    "max_weight_change",
    "max_a_change",
)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-")


def prepare(label: str, adapters_from: str | None):
    """The variant's workspace: features and cached states linked from the claims run, subset
    adapters copied from the run with the same recipe."""
    from core.workspace import Workspace

    folder = HERE / slug(label)
    if not folder.exists():
        folder.mkdir(parents=True)
        for part in ("features", "cache"):
            shutil.copytree(CLAIMS / part, folder / part, copy_function=os.link)
        source = CLAIMS if adapters_from is None else None
        if adapters_from not in (None, "fresh"):
            source = HERE / slug(adapters_from)
        for src in sorted((source / "adapters").glob("subset-*")) if source else []:
            shutil.copytree(src, folder / "adapters" / src.name)
    return Workspace(folder)


def with_overrides(cfg, overrides: dict):
    update = {
        section: getattr(cfg, section).model_copy(update=values)
        for section, values in overrides.items()
    }
    return cfg.model_copy(update=update)


def run_variant(base_cfg, label: str, k: int) -> dict:
    from core.pipeline import affinity
    from core.validate.validation import validate_estimate

    overrides, adapters_from = VARIANTS[label]
    ws = prepare(label, adapters_from)
    cfg = with_overrides(base_cfg, overrides)
    ws.save_config(cfg)
    say(f"{label}: estimate")
    affinity(cfg, ws)
    say(f"{label}: real fine-tunes (reused when the recipe matches)")
    start = time.perf_counter()
    v = validate_estimate(cfg, ws, n=k, jobs=False, progress=False)
    return {
        "label": label,
        "overrides": overrides,
        "lr": cfg.training.lr,
        "max_norm": cfg.estimator.max_norm,
        "seconds": round(time.perf_counter() - start, 1),
        "summary": {key: v["summary"][key] for key in SUMMARY},
        "linear_regime": v["verdict"]["linear_regime"],
        "reasons": v["verdict"]["reasons"],
    }


def main() -> None:
    from machine import machine_info

    from core.workspace import Workspace

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--subsets", type=int, default=8)
    args = ap.parse_args()
    if not (CLAIMS / "config.yaml").exists():
        raise SystemExit(f"{CLAIMS} has no config.yaml: run bench/claims.py first")
    base = Workspace(CLAIMS).load_config()
    rows = [run_variant(base, label, args.subsets) for label in VARIANTS]
    out = {
        "command": "python bench/sensitivity.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "base": "the claims run's config and its first K estimated subsets",
        "subsets": args.subsets,
        "variants": rows,
    }
    dest = ROOT / "bench" / "results" / "sensitivity.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        s = r["summary"]
        say(
            f"{r['label']:34s} loss err {s['mean_loss_rel_error']:.1%}  acc err "
            f"{s['mean_accuracy_abs_error']:.3f}  pred/real drop {s['mean_predicted_loss_drop']:.3f}"
            f"/{s['mean_real_loss_drop']:.3f}  A moved {s['max_a_change']:.1%}"
        )


if __name__ == "__main__":
    main()
