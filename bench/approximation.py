"""Benchmark: the first-order (Taylor) approximation of h against real forward passes.

On SmolLM2-135M with the quick config's adapter (LoRA r=4, alpha=32 on q,k,v of the top 8
layers) and real sample rows (yelp, snli, newsgroups), for each quantization setting:

1. At the expansion point (fresh seeded adapter, B = 0), for every val row: h0 and the
   UNPROJECTED gradient g = ∂h/∂B (k = D) for both targets ("choices" and "vocab"), plus the
   unprojected logit gradients G_c = ∂z_c/∂B and Glse = ∂lse/∂B.
2. Updates of several sizes:
   a. a short REAL fine-tune (core.train.trainer.train_adapter, the quick recipe) with its A and B
      scaled: A = A0 + s(A_ft − A0), B = s·B_ft ("finetune"); and its B part alone, A = A0
      ("finetune[B only]"), which separates the second-order A·B term from curvature in B;
   b. the estimator's own update: fit_update(max_norm) on the stored projected train features
      of each target → w, Δ_B = Π (s·w).
3. Real h from a no-grad forward pass with the update applied, against the linear predictions
   (see METRICS), and the relative weight change ‖scaling·B·A‖_F / ‖W‖_F of the adapted matrices.
   The real forwards start at the first adapted layer from cached hidden states (the layers
   below carry no adapter); checked equal to the full forward at the expansion point.

Workspaces (gitignored): workspaces/bench-approx-<quantization>-<target>; a rerun reuses their
fine-tune and feature stores.

Writes bench/results/approximation.json and prints a table.

    .venv/bin/python bench/approximation.py [--quantization 4bit none] [--rows 32]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np  # noqa: E402
from approximation_model import (
    base_weight_norms,
    estimator_rows,
    estimator_update,
    expansion_features,
    finetune_rows,
    finetune_weights,
    lora_weights,
    real_forward,
    set_adapter,
    update_norm,
)
from approximation_setup import (
    EST_SCALES,
    FT_SCALES,
    METRICS,
    PREDICTIONS,
    ROOT,
    TARGETS,
    TASKS,
    THRESHOLDS,
    Batch,
    LowerLayerCache,
    make_config,
    say,
    val_batches,
)
from machine import machine_info  # noqa: E402 (bench/ is on the path of a bench script)


@dataclass
class Context:
    """The expansion point of one setting: model, adapter weights, val batches with features."""

    quantization: str
    model: object
    projector: object
    weights: list
    A0: list
    B0: list
    w_norms: list
    batches: list


def run_setting(args, quantization: str) -> dict:
    """Everything for one quantization setting; returns its part of the report."""
    import torch

    from core.gradients.extract import load_extraction_model
    from core.gradients.per_example import prepare_for_extraction
    from core.models.adapters import layers_to_transform

    t0 = time.perf_counter()
    say(f"[{quantization}] estimator updates: gradient stores (core.pipeline) + fit_update")
    est = {t: estimator_update(args, quantization, t) for t in TARGETS}
    for t, (_, info) in est.items():
        say(f"[{quantization}] fit on {t}: |w| = {info['w_norm']:.4g}, reg = {info['reg']:.3g}")

    say(f"[{quantization}] loading the expansion point")
    cfg = make_config(args, quantization, "choices")
    model, tok, projector = load_extraction_model(cfg)
    weights = lora_weights(model)
    A0 = [a.detach().clone() for a, _, _ in weights]
    B0 = [torch.zeros_like(b) for _, b, _ in weights]
    try:
        w_norms = base_weight_norms(weights)
    except Exception as err:  # relative weight change is optional: say why it is missing
        say(f"[{quantization}] base weight norms unavailable: {err}")
        w_norms = None

    say(f"[{quantization}] real fine-tune: {args.epochs} epochs on {args.rows} rows per task")
    A_ft, B_ft, ft_info = finetune_weights(args, quantization, model, weights)
    set_adapter(weights, A0, B0)
    prepare_for_extraction(model)
    say(
        f"[{quantization}] fine-tune done: |ΔB| = {update_norm(B_ft):.4g}, history {ft_info['history']}"
    )

    say(f"[{quantization}] expansion-point features (unprojected, D = {projector.D})")
    batches = val_batches(cfg, tok, args.batch_size)
    expansion_features(model, batches)
    full = _max_h_diff(real_forward(model, batches), batches)
    cache = LowerLayerCache(model, min(layers_to_transform(model, cfg.adapter.top_layers)))
    cache.fill(batches)
    ctx = Context(quantization, model, projector, weights, A0, B0, w_norms, batches)
    with cache:
        cached = _max_h_diff(real_forward(model, batches, cached=True), batches)
        say(f"[{quantization}] h0 check: full forward {full:.2e}, cached forward {cached:.2e}")
        rows = finetune_rows(ctx, A_ft, B_ft)
        for target, (w, info) in est.items():
            rows += estimator_rows(ctx, target, w, info)
    set_adapter(weights, A0, B0)
    return {
        "quantization": quantization,
        "D": projector.D,
        "k": projector.k,
        "A0_norm": update_norm(A0),
        "val_rows": int(sum(len(b.rows) for b in batches)),
        "check_max_abs_h0_full_forward_vs_features": full,
        "check_max_abs_h0_cached_forward_vs_features": cached,
        "finetune": ft_info,
        "estimator": {t: info for t, (_, info) in est.items()},
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _max_h_diff(real: list[dict], batches: list[Batch]) -> float:
    """Largest |h_real − h0| over rows and targets (0 up to float rounding at the expansion
    point: validates the no-grad and the cached forward against the feature pass)."""
    return max(
        float(np.max(np.abs(r["h"][t] - b.h0[t])))
        for r, b in zip(real, batches, strict=True)
        for t in TARGETS
    )


def norm_threshold(points: list[tuple[float, float]], thr: float) -> dict:
    """Largest ‖Δ_B‖ up to which the error stays under thr, from (norm, error) points.

    Walks the points by increasing norm; the first error above thr ends the walk and the
    threshold is log-log interpolated between it and the last point under thr.
    """
    points = sorted(points)
    last_ok = None
    for n, e in points:
        if e > thr:
            if last_ok is None:
                return {"delta_B_norm": None, "note": f"already above at the smallest norm {n:.3g}"}
            n0, e0 = last_ok
            t = math.log(thr / e0) / math.log(e / e0) if e > e0 else 0.0
            return {"delta_B_norm": math.exp(math.log(n0) + t * math.log(n / n0)), "note": ""}
        last_ok = (n, e)
    return {"delta_B_norm": points[-1][0], "note": "never above: at least the largest norm"}


def summarise(settings: list[dict]) -> dict:
    """Per setting, update kind, target and prediction: norm thresholds for 5% and 10%."""
    out = {}
    for st in settings:
        q = st["quantization"]
        for update in dict.fromkeys(r["update"] for r in st["rows"]):
            rows = [r for r in st["rows"] if r["update"] == update]
            ratio = None
            if update.startswith("estimator"):
                ratio = st["estimator"][update[len("estimator[") : -1]]["lift_ratio"]
            for t in TARGETS:
                for kind in ("lin_h", "lin_logits"):
                    pts = [(r["delta_B_norm"], r[t][kind]["change_rel_err"]) for r in rows]
                    entry = {}
                    for thr in THRESHOLDS:
                        th = norm_threshold(pts, thr)
                        if ratio and th["delta_B_norm"] is not None:
                            th["w_norm"] = th["delta_B_norm"] / ratio
                        entry[f"{int(thr * 100)}%"] = th
                    out[f"{q} | {update} | {t} | {kind}"] = entry
    return out


def recommend(settings: list[dict], summary: dict) -> dict:
    """The trust region in the estimator's own units (‖w‖) that keeps the change error under
    5% / 10%: the smallest threshold over settings, targets and both prediction kinds, next to
    the size of the real fine-tune's B update expressed in the same units."""
    out = {}
    for st in settings:
        q = st["quantization"]
        ratio = float(np.mean([e["lift_ratio"] for e in st["estimator"].values()]))
        ft = next(r for r in st["rows"] if r["update"] == "finetune" and r["scale"] == 1.0)
        entry = {
            "lift_ratio": ratio,
            "finetune_delta_B_norm": ft["delta_B_norm"],
            "finetune_delta_B_norm_in_w_units": ft["delta_B_norm"] / ratio,
            "finetune_rel_weight_change": (ft["rel_weight_change"] or {}).get("total"),
        }
        for thr in THRESHOLDS:
            key = f"{int(thr * 100)}%"
            ws = [
                v[key].get("w_norm")
                for k, v in summary.items()
                if k.startswith(f"{q} | estimator") and v[key].get("w_norm") is not None
            ]
            entry[f"w_norm_max_at_{key}"] = min(ws) if ws else None
        out[q] = entry
    at5 = [e["w_norm_max_at_5%"] for e in out.values() if e["w_norm_max_at_5%"] is not None]
    if at5:
        m = min(at5)
        digits = 10 ** math.floor(math.log10(m))
        out["suggested_max_norm"] = math.floor(m / digits) * digits
        out["rule"] = (
            "largest ‖w‖ (one significant digit, rounded down) under which every estimator "
            "update measured kept change_rel_err ≤ 5% for both targets and both predictions"
        )
    return out


def print_table(settings: list[dict]) -> None:
    head = (
        f"{'setting':7} {'update':19} {'scale':>5} {'|w|':>7} {'|ΔB|':>7} {'|ΔA|':>6} "
        f"{'relW%':>7} | {'choices: chg':>12} {'chgL':>6} {'rse':>8} {'corr':>5} "
        f"| {'vocab: chg':>10} {'chgL':>6} {'rse':>8} {'corr':>5} | {'acc':>4}"
    )
    print(head)
    print("-" * len(head))
    for st in settings:
        for r in st["rows"]:
            rel = r["rel_weight_change"]["total"] * 100 if r["rel_weight_change"] else float("nan")
            cells = []
            for t in TARGETS:
                m, ml = r[t]["lin_h"], r[t]["lin_logits"]
                cells.append(
                    f"{m['change_rel_err']:12.4f} {ml['change_rel_err']:6.3f} "
                    f"{m['paper_rse_mean']:8.2e} {m['corr']:5.2f}"
                )
            w = f"{r['w_norm']:7.3f}" if "w_norm" in r else f"{'-':>7}"
            print(
                f"{st['quantization']:7} {r['update']:19} {r['scale']:5g} {w} "
                f"{r['delta_B_norm']:7.3f} {r['delta_A_norm']:6.3f} {rel:7.4f} | "
                f"{cells[0]} | {cells[1][2:]} | {r['val_accuracy_real']:4.2f}"
            )
    print(
        "chg = change_rel_err of lin_h (h0 + g·ΔB); chgL = of lin_logits; rse = paper metric "
        "(mean rel. squared error of h); acc = real val accuracy"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quantization", nargs="+", default=["4bit", "none"], choices=["4bit", "none"])
    p.add_argument("--rows", type=int, default=32, help="train and val rows per task")
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--epochs", type=int, default=2, help="epochs of the real fine-tune")
    p.add_argument("--max-norm", type=float, default=1.0, help="fit_update's trust region")
    p.add_argument("--batch-size", type=int, default=16, help="val batch size")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--workspaces", default=str(ROOT / "workspaces"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "approximation.json"))
    args = p.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    start, load_before = time.time(), os.getloadavg()
    settings = [run_setting(args, q) for q in args.quantization]
    print_table(settings)
    summary = summarise(settings)
    report = {
        "command": " ".join([".venv/bin/python", "bench/approximation.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "settings": {
            "model": "smollm2-135m (float32 compute)",
            "quantizations": args.quantization,
            "adapter": "LoRA r=4 alpha=32 (scaling 8) on q,k,v of the top 8 of 30 layers, seed 0",
            "tasks": TASKS,
            "rows_per_task": {"train": args.rows, "val": args.rows},
            "max_tokens": args.max_tokens,
            "projection": "countsketch k=400 seed 0",
            "finetune": f"core.train.trainer.train_adapter, {args.epochs} epochs, lr 5e-4, batch 8",
            "finetune_scales": list(FT_SCALES),
            "estimator": f"fit_update(max_norm={args.max_norm}) per target on stored features",
            "estimator_scales": list(EST_SCALES),
            "torch_threads": args.threads,
        },
        "metrics": METRICS,
        "predictions": PREDICTIONS,
        "norms": {
            "w_norm": "‖s·w‖, the estimator's own norm (what estimator.max_norm caps)",
            "delta_B_norm": "‖Δ_B‖ over all LoRA B entries (= ‖Π s·w‖ for estimator updates)",
            "delta_A_norm": "‖A − A0‖ (fine-tune only; the estimator never moves A)",
            "rel_weight_change": "‖scaling·B·A‖_F / ‖W‖_F of the adapted matrices (W "
            "dequantised for 4-bit); total = sqrt(Σ‖ΔW‖²)/sqrt(Σ‖W‖²)",
            "lift_ratio": "‖Πw‖/‖w‖ of the fitted update (≈ sqrt(D/k) for countsketch)",
        },
        "thresholds": summary,
        "recommendation": recommend(settings, summary),
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "wall_seconds": round(time.time() - start, 1),
        "results": settings,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for key, entry in summary.items():
        print(key, json.dumps(entry))
    print("recommendation", json.dumps(report["recommendation"], indent=1))
    print(f"wrote {args.out} ({report['wall_seconds']} s)")


if __name__ == "__main__":
    main()
