"""Benchmark: the paper's headline claims measured on GroupTune, side by side in one run.

Config: sample_data/full.yaml (10 tasks) reduced to fit about 40 minutes on 2 CPU cores (row
caps, 2 epochs, the fast path as in quick.yaml: adapter.top_layers 8 with the frozen-prefix
cache, float32 compute on the 4-bit base; `--dtype bfloat16` is faster but not exact).
Steps (the pipeline's own functions; every piece is saved in the workspace and skipped on rerun):

  features    core.pipeline.gradients + affinity (the estimator scores its sampled subsets)
  a. estimate  the first K subsets the estimator sampled, fine-tuned for real with the group
               adapters' recipe (core.validation: pick_subsets, train_subset, compare, i.e.
               validate_estimate(jobs=False)): predicted vs real val loss and accuracy
  b. speed-up  cost of estimation (features stage + scoring the K subsets; the shared prefix
               cache build reported apart and added in a conservative variant) vs the real
               fine-tunes of (a), wall seconds and FLOPs
  c. approx    at each real fine-tuned update of (a), on its tasks' val rows: h0 (B = 0), the
               real h (a real forward), the first-order prediction h0 + g·vec(ΔB) with
               UNPROJECTED g (float32 compute), and the real h with B fine-tuned and A held at A0
  d. ensemble  for training seeds {0, 1} and two m: one adapter per group of the sweep's
               partition and one baseline adapter on all tasks; test accuracy of the ensemble
               (each task by its own group's adapter), the baseline and the zero-shot base

Writes bench/results/claims.json and bench/RESULTS.md (generated from the JSON and the other
bench/results/*.json). Progress lines go to stderr.

    .venv/bin/python bench/claims.py [--subsets 8] [--m 3 2] [--workspace workspaces/bench-claims]
    .venv/bin/python bench/claims.py --smoke        # tiny-llama experiment, temp dir, seconds
    .venv/bin/python bench/claims.py --report-only  # RESULTS.md again from claims.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("GROUPTUNE_PROGRESS", "0")
# transformers' deprecation notices, once per model load, would bury the progress lines
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SEEDS = (0, 1)
PAPER = {
    "approximation": "relative squared error of h < 1% (LoRA, averaged over examples)",
    "estimation": "relative error of the estimated loss < 5% against real fine-tuning",
    "speedup": "105x: scoring K subsets (Step 1 included) vs fine-tuning them",
    "ensemble": "up to +10 points mean test accuracy over one QLoRA adapter",
    "flops": "for +9% FLOPs (1.09x) over one QLoRA adapter",
}
PAPER_VALUES = {"rse": 0.01, "loss_rel_error": 0.05, "speedup": 105, "gain": 10, "flops": 1.09}


def say(msg: str) -> None:
    """Progress line on stderr (stdout stays free for the summary)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 2)


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# --- configuration --------------------------------------------------------------------------


def make_config(args):
    """The full sample config reduced by the CLI caps (or the tests' tiny experiment)."""
    from core.config import load_config

    if args.smoke:
        from tests.conftest import write_tiny_experiment

        return load_config(write_tiny_experiment(args.smoke_dir, adapter={"top_layers": 1}))
    cfg = load_config(args.config)
    caps = {"max_train": args.max_train, "max_val": args.max_val, "max_test": args.max_test}
    return cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={**caps, "max_tokens": args.max_tokens}),
            "adapter": cfg.adapter.model_copy(update={"top_layers": args.top_layers}),
            "model": cfg.model.model_copy(update={"dtype": args.dtype, "threads": args.threads}),
            "training": cfg.training.model_copy(
                update={"epochs": args.epochs or cfg.training.epochs}
            ),
        }
    )


# --- features and the estimator -------------------------------------------------------------


def estimation_stage(cfg, ws) -> dict:
    from core.pipeline import affinity, gradients

    say("features: gradient stores of every task (skipped when fresh)")
    _, t_feat = timed(lambda: gradients(cfg, ws))
    say(f"features done in {t_feat} s; affinity: the estimator scores its sampled subsets")
    _, t_aff = timed(lambda: affinity(cfg, ws))
    return {"features_seconds_this_run": t_feat, "affinity_seconds_this_run": t_aff}


# --- a. estimation error --------------------------------------------------------------------


ROW_KEYS = (  # of validation.json's rows: what this bench reports per (subset, task)
    "subset",
    "task",
    "predicted_loss",
    "real_loss",
    "loss_rel_error",
    "predicted_accuracy",
    "real_accuracy",
    "accuracy_abs_error",
)
SUMMARY_KEYS = (  # of validation.json's summary
    "n_subsets",
    "n_points",
    "mean_loss_rel_error",
    "mean_accuracy_abs_error",
    "loss_correlation",
    "accuracy_correlation",
    "mean_predicted_loss_drop",
    "mean_real_loss_drop",
    "max_weight_change",
    "max_a_change",
)


def part_estimation(cfg, ws, k: int) -> tuple[dict, list]:
    """validate_estimate(cfg, ws, n=k, jobs=False), one progress line per subset."""
    from core.validation import compare, pick_subsets, predictions, train_subset

    subsets = pick_subsets(ws, k, cfg.task_names)
    predictions(ws)  # fail before any training when the estimates are missing
    for i, tasks in enumerate(subsets):
        say(f"a. real fine-tune {i + 1}/{len(subsets)}: {'+'.join(tasks)}")
        train_subset(cfg, ws, tasks, progress=False)
    v = compare(cfg, ws, subsets, requested=k)
    rows = [{key: r[key] for key in ROW_KEYS} for r in v["rows"]]
    per_task = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        per_task[task] = {
            "n": len(mine),
            "loss_rel_error": float(np.mean([r["loss_rel_error"] for r in mine])),
            "accuracy_abs_error": float(np.mean([r["accuracy_abs_error"] for r in mine])),
        }
    out = {
        "source": "validation.json (core.validation)",
        "loss_comparable": v["settings"]["loss_comparable"],
        "summary": {key: v["summary"][key] for key in SUMMARY_KEYS},
        "verdict": v["verdict"],
        "per_task": per_task,
        "rows": rows,
        "subsets": v["subsets"],
    }
    return out, subsets


# --- b. speed-up ----------------------------------------------------------------------------


def prefix_cache_build(acct: dict) -> dict:
    """The prefix cache of the train and val splits (what estimation and fine-tuning read);
    the test splits' states are built later, for scoring."""
    parts = acct.get("prefix_cache", {}).get("parts", {})
    used = {n: p for n, p in parts.items() if (n.split(".") + ["", ""])[1] in ("train", "val")}
    return {
        "wall_seconds": sum(p["wall_seconds"] for p in used.values()),
        "flops": sum(p["flops"] for p in used.values()),
        "parts": len(used),
    }


def time_scoring(cfg, ws, subsets) -> dict:
    """The estimator's fit + predict for exactly the K subsets (median of 3; features loaded
    first, outside the timing)."""
    from core.affinity import score_subsets
    from core.estimate import fitter
    from core.store import load_features

    feats, t_load = timed(lambda: {t: load_features(ws, t) for s in subsets for t in s})
    fit = fitter(cfg)
    runs = [timed(lambda: score_subsets(feats, subsets, fit, False))[1] for _ in range(3)]
    return {"wall_seconds": float(np.median(runs)), "load_seconds": t_load, "runs": runs}


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def part_speedup(cfg, ws, subsets) -> dict:
    from core.accounting import Accounting
    from core.validation import finished_record

    acct = Accounting(ws).read()
    feats = {k: acct["gradients"][k] for k in ("wall_seconds", "flops")}
    stage = acct.get("estimation", {})
    cache = prefix_cache_build(acct)
    scoring = time_scoring(cfg, ws, subsets)
    records = [finished_record(ws, s)["accounting"] for s in subsets]
    ft = {k: sum(r[k] for r in records) for k in ("wall_seconds", "flops")}
    n_sampled = len(ws.read("estimates", "subsets.json")["subsets"])
    variants = {
        "features + scoring the K subsets (timed here)": (scoring["wall_seconds"], 0),
        "features + estimation stage (all sampled subsets, accounting.json)": (
            stage.get("wall_seconds", 0.0),
            0,
        ),
        "conservative: features + estimation stage + prefix cache build": (
            stage.get("wall_seconds", 0.0) + cache["wall_seconds"],
            cache["flops"],
        ),
    }
    rows = []
    for name, (extra_wall, extra_flops) in variants.items():
        wall, flops = feats["wall_seconds"] + extra_wall, feats["flops"] + extra_flops
        rows.append(
            {
                "estimation": name,
                "wall_seconds": wall,
                "flops": flops,
                "wall_ratio": ratio(ft["wall_seconds"], wall),
                "flops_ratio": ratio(ft["flops"], flops),
                "finetuned_subsets": len(subsets),
            }
        )
    # extrapolation: every sampled subset fine-tuned at the mean measured cost of one
    scale = n_sampled / len(subsets)
    base = rows[1]
    rows.append(
        {
            "estimation": f"extrapolated: all {n_sampled} sampled subsets fine-tuned "
            "(mean measured cost x count) vs features + estimation stage",
            "wall_seconds": base["wall_seconds"],
            "flops": base["flops"],
            "wall_ratio": ratio(scale * ft["wall_seconds"], base["wall_seconds"]),
            "flops_ratio": ratio(scale * ft["flops"], base["flops"]),
            "finetuned_subsets": n_sampled,
        }
    )
    return {
        "features": feats,
        "estimation_stage": {k: stage.get(k) for k in ("wall_seconds", "flops", "method")},
        "scoring_k_subsets": scoring,
        "prefix_cache_build": cache,
        "finetune": {
            **ft,
            "subsets": len(subsets),
            "adapters": [finished_record(ws, s)["name"] for s in subsets],
        },
        "sampled_subsets": n_sampled,
        "variants": rows,
        "note": "The estimator's FLOPs are not counted (solver on k-dim projected features; "
        "accounting.json records 0). Fine-tune wall_seconds are the training loops + val "
        "passes (grouptune.json accounting), features wall_seconds the gradients stage.",
    }


# --- c. approximation at the real fine-tuned updates ----------------------------------------


def expansion(cfg, tasks: list[str]):
    """The seeded adapter (B = 0) in float32 compute, its val batches with h0 and unprojected g
    of the config's target, and lower layers cached for the real forwards."""
    import approximation as ap
    import torch

    from core.adapters import layers_to_transform
    from core.features import batch_features, load_extraction_model

    fcfg = cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"dtype": "float32"}),
            "tasks": [t for t in cfg.tasks if t.name in tasks],
        }
    )
    model, tok, _ = load_extraction_model(fcfg)
    weights = ap.lora_weights(model)
    A0 = [a.detach().clone() for a, _, _ in weights]
    B0 = [torch.zeros_like(b) for _, b, _ in weights]
    batches = ap.val_batches(fcfg, tok, cfg.features.batch_size)
    target = cfg.features.target
    for b in batches:
        f = batch_features(model, b.inputs, b.choice_ids, b.gold, target, "train")
        b.h0[target], b.g[target] = f["h"].numpy().astype(np.float64), f["g"].numpy()
    cache = ap.LowerLayerCache(model, min(layers_to_transform(model, cfg.adapter.top_layers)))
    cache.fill(batches)
    return model, weights, A0, B0, batches, cache


def real_h(model, weights, As, Bs, batches, target) -> np.ndarray:
    import approximation as ap

    ap.set_adapter(weights, As, Bs)
    return np.concatenate([r["h"][target] for r in ap.real_forward(model, batches, cached=True)])


def subset_errors(ctx, adapter_file: Path, tasks, target: str) -> dict:
    """Real h (fine-tuned A and B; B only) vs h0 + g·vec(ΔB) on the subset's val rows."""
    import approximation as ap

    from core.training import load_adapter_weights

    model, weights, A0, B0, batches, _ = ctx
    mine = [b for b in batches if b.task in tasks]
    load_adapter_weights(model, adapter_file)
    A_ft = [a.detach().clone() for a, _, _ in weights]
    B_ft = [b.detach().clone() for _, b, _ in weights]
    delta = np.concatenate([b.double().numpy().reshape(-1) for b in B_ft])
    h0 = np.concatenate([b.h0[target] for b in mine])
    pred = np.concatenate([b.h0[target] + b.g[target].astype(np.float64) @ delta for b in mine])
    row_task = np.concatenate([[b.task] * len(b.rows) for b in mine])
    out = {"val_rows": len(h0), "delta_B_norm": float(np.linalg.norm(delta))}
    for kind, As in (("full", A_ft), ("B_only", A0)):
        h = real_h(model, weights, As, B_ft, mine, target)
        m = ap.error_metrics(h0, h, pred, row_task)
        out[kind] = {
            **m,
            "per_task_paper_rse_mean": {
                t: ap.error_metrics(
                    h0[row_task == t],
                    h[row_task == t],
                    pred[row_task == t],
                    row_task[row_task == t],
                )["paper_rse_mean"]
                for t in dict.fromkeys(row_task)
            },
        }
    ap.set_adapter(weights, A0, B0)
    return out


def part_approximation(cfg, ws, subsets, estimation: dict) -> dict:
    """Per subset adapter of (a); cached in <ws>/claims/approximation.json by adapter weights."""
    from core.validation import adapter_name

    files = [ws.adapter_dir(adapter_name(s)) / "adapter_model.safetensors" for s in subsets]
    key = {"adapters": [file_digest(f) for f in files], "target": cfg.features.target}
    cached = ws.read("claims", "approximation.json")
    if cached and cached.get("key") == key:
        say("c. approximation: reused (adapters unchanged)")
        return cached["result"]
    tasks = sorted({t for s in subsets for t in s})
    say(
        f"c. approximation: expansion point and unprojected g on the val rows of {len(tasks)} tasks"
    )
    ctx = expansion(cfg, tasks)
    norms = {u["subset"]: u for u in estimation["subsets"]}
    rows = []
    with ctx[5]:
        for s, f in zip(subsets, files, strict=True):
            say(f"c. real forwards for {'+'.join(s)}")
            err = subset_errors(ctx, f, s, cfg.features.target)
            u = norms["+".join(s)]
            rows.append(
                {
                    "subset": "+".join(s),
                    "weight_change": u["weight_change"],
                    "a_change": u["a_change"],
                    **err,
                }
            )
    result = {
        "rows": rows,
        "summary": approx_summary(rows),
        "target": cfg.features.target,
        "compute": "float32 (same 4-bit weights and adapters; bf16 rounding would swamp "
        "the small changes)",
        "metrics": METRICS,
    }
    ws.write({"key": key, "result": result}, "claims", "approximation.json")
    return result


METRICS = {
    "paper_rse_mean": "mean over val rows of (h_real - h_pred)^2 / h_real^2: the paper's metric",
    "change_rel_err": "||h_real - h_pred|| / ||h_real - h0||: error of the predicted change of h",
    "full": "real h with the fine-tuned A and B",
    "B_only": "real h with the fine-tuned B and A held at A0 (the estimator's own assumption)",
}


def approx_summary(rows: list[dict]) -> dict:
    def mean(kind, key):
        return float(np.mean([r[kind][key] for r in rows]))

    return {
        kind: {
            key: mean(kind, key)
            for key in ("paper_rse_mean", "paper_rse_median", "change_rel_err", "corr")
        }
        for kind in ("full", "B_only")
    } | {
        "mean_weight_change": float(np.mean([r["weight_change"] for r in rows])),
        "mean_a_change": float(np.mean([r["a_change"] for r in rows])),
    }


# --- d. ensemble vs one adapter -------------------------------------------------------------


def choose_ms(cfg, ws) -> tuple[int, dict, dict]:
    """The recommended m, the sweep's partition for every m, and the recommendation; through
    pipeline.sweep only, so groupings/chosen.json is left as it is."""
    from core.grouping import recommend_m
    from core.pipeline import sweep

    entries = [e for e in sweep(cfg, ws) if e["method"] == cfg.grouping.method]
    rec, _, reason = recommend_m(entries)
    return rec, {e["m"]: e["groups"] for e in entries}, {"m": rec, "reason": reason}


def part_ensemble(cfg, ws, args, save) -> dict:
    """Part d (bench/claims_ensemble.py): `save(d)` is called with the partial result."""
    from claims_ensemble import part_ensemble as run

    return run(cfg, ws, choose_ms, args.seeds, args.seeds[: args.extra_seeds], save)


# --- report ---------------------------------------------------------------------------------


def verdicts(res: dict) -> list[dict]:
    """claim | paper | GroupTune | holds? rows."""
    a, b, c, d = (res["parts"][k] for k in ("estimation", "speedup", "approximation", "ensemble"))
    speed = b["variants"][0]
    loss_err = a["summary"]["mean_loss_rel_error"] if a["loss_comparable"] else None
    rse = c["summary"]["full"]["paper_rse_mean"]
    rows = [
        approximation_row(c, rse),
        {
            "claim": "estimation error",
            "paper": PAPER["estimation"],
            "grouptune": "n/a (target vocab)"
            if loss_err is None
            else f"{loss_err:.1%} "
            f"(accuracy abs. error {a['summary']['mean_accuracy_abs_error']:.3f})",
            "criterion": "mean < 5%",
            "holds": None if loss_err is None else loss_err < PAPER_VALUES["loss_rel_error"],
        },
        {
            "claim": "speed-up",
            "paper": PAPER["speedup"],
            "grouptune": f"{_x(speed['wall_ratio'])} wall, {_x(speed['flops_ratio'])} FLOPs "
            f"(K = {speed['finetuned_subsets']}); all {b['sampled_subsets']} sampled: "
            f"{_x(b['variants'][-1]['wall_ratio'])} wall",
            "criterion": "wall ratio at K >= 105x",
            "holds": (speed["wall_ratio"] or 0) >= PAPER_VALUES["speedup"],
        },
        *ensemble_rows(d),
    ]
    agreement = agreement_row()
    return rows if agreement is None else [rows[0], agreement, *rows[1:]]


def ensemble_rows(d: dict) -> list[dict]:
    """The ensemble's two verdicts: its gain with the interval, and its training FLOPs."""
    if not d.get("seeds"):
        na = {"paper": PAPER["ensemble"], "grouptune": "not run yet", "holds": None}
        return [
            {"claim": "ensemble accuracy", "criterion": "", **na},
            {"claim": "ensemble cost", "criterion": "", **na, "paper": PAPER["flops"]},
        ]
    lo, hi = d["gain_ci"]
    rec = d["recommended"]["m"]
    boosting = d["recipe"]["ensemble"]["boosting"]
    partial = "" if d["complete"] else "; partial run"
    return [
        {
            "claim": "ensemble accuracy",
            "paper": PAPER["ensemble"],
            "grouptune": f"{d['mean_gain']:+.1f} points, 95% CI [{lo:+.1f}, {hi:+.1f}] (m = "
            f"{rec}, fitted weights + {boosting} boosting round(s), {len(d['seeds'])} paired "
            f"seeds{partial})",
            "criterion": "gain >= +3 points, CI excludes 0",
            "holds": d["mean_gain"] >= 3 and lo > 0,
        },
        {
            "claim": "ensemble cost",
            "paper": PAPER["flops"],
            "grouptune": f"{_x(d['flops_ratio_paper'])} training FLOPs, the paper's counting "
            f"(train-side features + group and boosting adapters / baseline); "
            f"{_x(d['flops_ratio_full'])} in full (every feature, prefix cache, estimator, "
            "weights)",
            "criterion": "<= 1.10x (paper's counting)",
            "holds": d["flops_ratio_paper"] <= 1.10,
        },
    ]


def approximation_row(c: dict, rse: float) -> dict:
    """The paper's protocol (bench/approx_paper.py) when it ran, else this bench's part c."""
    paper = _load("approx_paper")
    if paper is None:
        return {
            "claim": "approximation error",
            "paper": PAPER["approximation"],
            "grouptune": f"{rse:.2%} at the real updates (median "
            f"{c['summary']['full']['paper_rse_median']:.2%}; error of the change Δh: "
            f"{c['summary']['full']['change_rel_err']:.0%})",
            "criterion": "mean < 1%",
            "holds": rse < PAPER_VALUES["rse"],
        }
    s = paper["summary"]
    worst = max(s["paper_protocol"].values())
    return {
        "claim": "approximation error",
        "paper": PAPER["approximation"],
        "grouptune": f"{worst:.3%} at most for updates of 0.02-0.10 x ‖θ*_LoRA‖ (the paper's "
        f"protocol, bench/approx_paper.py); {s['real_update_paper_error_train']:.2%} at the "
        f"real fine-tuned updates ({min(s['real_over_theta']):.2f}-"
        f"{max(s['real_over_theta']):.2f} x ‖θ*_LoRA‖)",
        "criterion": "mean < 1% (paper protocol)",
        "holds": worst < PAPER_VALUES["rse"],
    }


def agreement_row() -> dict | None:
    """Within-task agreement of the default estimator against its noise ceiling."""
    r = _load("agreement-claims")
    if r is None or "replay" not in r["variants"] or not r.get("noise_ceiling"):
        return None
    mine, ceiling = r["variants"]["replay"]["mean_over_seeds"], r["noise_ceiling"]
    return {
        "claim": "within-task agreement (what grouping uses)",
        "paper": "not reported (Grad-TAG style check)",
        "grouptune": f"order agreement {mine['order_agreement']:.1%} (seed vs seed "
        f"{ceiling['order_agreement']:.1%}); within-task loss corr. "
        f"{mine['within_task_corr_loss']:.2f} ({ceiling['within_task_corr_loss']:.2f}); "
        f"affinity corr. {r['variants']['replay']['affinity_corr']:.2f}",
        "criterion": ">= 80% or within 5 points of the ceiling",
        "holds": mine["order_agreement"] >= 0.8
        or mine["order_agreement"] >= ceiling["order_agreement"] - 0.05,
    }


def caveats(res: dict) -> list[str]:
    """The claims that do not hold here, and what limits the comparison."""
    out = [
        f"{v['claim']} does not hold here: {v['grouptune']}"
        for v in res["verdicts"]
        if v["holds"] is False
    ]
    b = res["parts"]["speedup"]
    out += [
        f"Speed-up: only K = {b['finetune']['subsets']} subsets are fine-tuned, while the "
        "features stage is paid once for every task; the ratio grows with K (see the "
        "extrapolated row), and the paper scores far more subsets than it could fine-tune.",
        "Approximation: measured in float32 compute on the adapters trained in the config's "
        "dtype; the paper's metric divides by h², so rows with h near 0 dominate its mean "
        "(the median and the error of the change Δh are given beside it).",
        "Ensemble: with these row counts one example moves a task's accuracy by 1/rows; "
        "the interval is what tells a gain from noise.",
    ]
    now = res["settings"]["config"]
    kept = [n for n, p in res.get("provenance", {}).items() if p.get("settings") != now]
    if kept:
        out.append(
            f"Parts {kept} were measured with other settings (kept from an earlier run; "
            "`provenance` in the JSON has them, e.g. an older training recipe)."
        )
    return out


def _x(v) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _holds(v) -> str:
    return {True: "yes", False: "no", None: "n/a"}[v]


def table(head: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def fmt(v, spec=".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = [
        "# GroupTune against the paper's claims",
        "",
        f"Generated by `bench/claims.py` from `{res['out_name']}`; do not edit by hand.",
        "",
        "## Claims",
        "",
    ]
    lines += table(
        ["claim", "paper", "GroupTune", "holds? (criterion)"],
        [
            [v["claim"], v["paper"], v["grouptune"], f"{_holds(v['holds'])} ({v['criterion']})"]
            for v in res["verdicts"]
        ],
    )
    conf = s.get("config", {})
    method = conf.get("estimator", {}).get("method", "argmin (trust region; before the replay)")
    t = conf.get("training", {})
    lines += [
        "",
        f"The claims table and parts a-d were measured with estimator `{method}`, training loss "
        f"`{t.get('loss', 'vocab')}`, A frozen: `{t.get('freeze_a', False)}` (claims.json's "
        "config). The sections on within-task agreement and on the paper's approximation "
        "protocol come from their own result files (their commands are given).",
    ]
    lines += ["", "## What this config is", "", s["description"], ""]
    lines += ["## Misses and caveats", ""] + [f"- {c}" for c in caveats(res)] + [""]
    lines += md_estimation(res["parts"]["estimation"]) + md_speedup(res["parts"]["speedup"])
    lines += md_approximation(res["parts"]["approximation"]) + md_ensemble(res["parts"]["ensemble"])
    lines += md_agreement() + md_paper_approximation() + md_sensitivity() + md_fastpath()
    lines += [
        "## Machine, versions, command",
        "",
        f"- command: `{res['command']}`",
        f"- wall seconds (this run): {res['wall_seconds']}",
    ]
    lines += [f"- {k}: {v}" for k, v in res["machine"].items()]
    lines += ["", "## Other bench results", ""] + other_results() + [""]
    return "\n".join(lines)


def md_estimation(a: dict) -> list[str]:
    sm = a["summary"]
    lines = [
        "## a. Estimation error (predicted vs real val metrics)",
        "",
        f"{sm['n_subsets']} subsets, {sm['n_points']} (subset, task) points; mean loss "
        f"relative error {fmt(sm['mean_loss_rel_error'], '.1%')}, mean accuracy absolute "
        f"error {fmt(sm['mean_accuracy_abs_error'])}, loss correlation "
        f"{fmt(sm['loss_correlation'], '.2f')}, accuracy correlation "
        f"{fmt(sm['accuracy_correlation'], '.2f')}; linear regime by core.validation's "
        f"checks: {a['verdict']['linear_regime']}"
        + "".join(f"; {r}" for r in a["verdict"]["reasons"])
        + ".",
        "",
    ]
    lines += table(
        ["subset", "task", "pred loss", "real loss", "rel err", "pred acc", "real acc", "abs err"],
        [
            [
                r["subset"],
                r["task"],
                fmt(r["predicted_loss"]),
                fmt(r["real_loss"]),
                fmt(r["loss_rel_error"], ".1%"),
                fmt(r["predicted_accuracy"]),
                fmt(r["real_accuracy"]),
                fmt(r["accuracy_abs_error"]),
            ]
            for r in a["rows"]
        ],
    )
    lines += [""] + table(
        ["task", "points", "mean loss rel err", "mean acc abs err"],
        [
            [t, v["n"], fmt(v["loss_rel_error"], ".1%"), fmt(v["accuracy_abs_error"])]
            for t, v in a["per_task"].items()
        ],
    )
    return lines + [""]


def md_speedup(b: dict) -> list[str]:
    lines = [
        "## b. Speed-up (estimation vs real fine-tuning)",
        "",
        f"Features stage: {b['features']['wall_seconds']:.1f} s, "
        f"{b['features']['flops']:.3g} FLOPs. Scoring the K subsets (timed here): "
        f"{b['scoring_k_subsets']['wall_seconds']:.3f} s; estimation stage (all "
        f"{b['sampled_subsets']} sampled subsets): "
        f"{fmt(b['estimation_stage']['wall_seconds'], '.2f')} s. Prefix cache build "
        f"(train/val states, one-off, shared by estimation and fine-tuning): "
        f"{b['prefix_cache_build']['wall_seconds']:.1f} s, "
        f"{b['prefix_cache_build']['flops']:.3g} FLOPs. Real fine-tunes of the "
        f"{b['finetune']['subsets']} subsets: {b['finetune']['wall_seconds']:.1f} s, "
        f"{b['finetune']['flops']:.3g} FLOPs. {b['note']}",
        "",
    ]
    lines += table(
        ["estimation side", "wall s", "FLOPs", "fine-tuned subsets", "wall ratio", "FLOPs ratio"],
        [
            [
                v["estimation"],
                f"{v['wall_seconds']:.1f}",
                f"{v['flops']:.3g}",
                v["finetuned_subsets"],
                _x(v["wall_ratio"]),
                _x(v["flops_ratio"]),
            ]
            for v in b["variants"]
        ],
    )
    return lines + [""]


def md_approximation(c: dict) -> list[str]:
    lines = [
        "## c. First-order approximation at the real fine-tuned updates",
        "",
        f"Target h = {c['target']}; compute {c['compute']}. Prediction h0 + g·vec(ΔB) with "
        "unprojected per-example gradients g at the seeded adapter (B = 0). "
        + "; ".join(f"{k}: {v}" for k, v in c["metrics"].items())
        + ".",
        "",
    ]
    rows = [
        [
            r["subset"],
            r["val_rows"],
            fmt(r["weight_change"], ".3%"),
            fmt(r["a_change"], ".1%"),
            fmt(r["delta_B_norm"]),
            fmt(r["full"]["paper_rse_mean"], ".2%"),
            fmt(r["full"]["change_rel_err"], ".1%"),
            fmt(r["full"]["corr"], ".2f"),
            fmt(r["B_only"]["paper_rse_mean"], ".2%"),
            fmt(r["B_only"]["change_rel_err"], ".1%"),
        ]
        for r in c["rows"]
    ]
    lines += table(
        [
            "subset",
            "val rows",
            "‖ΔW‖/‖W‖",
            "‖A−A0‖/‖A0‖",
            "‖ΔB‖",
            "RSE (paper)",
            "Δh error",
            "Δh corr",
            "RSE, B only",
            "Δh error, B only",
        ],
        rows,
    )
    return lines + [""]


def _gain(g: dict) -> str:
    lo, hi = g["gain_ci"]
    return f"{g['mean_gain']:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def md_ensemble(d: dict) -> list[str]:
    covered = ", ".join(f"s{c['seed']} m{c['m']}" for c in d["covered"]) or "nothing yet"
    lines = [
        "## d. Ensemble vs one QLoRA adapter (test accuracy)",
        "",
        f"Recommended m: {d['recommended']['m']} ({d['recommended']['reason']}). "
        f"Groups: {json.dumps({m: d['groups'][str(m)] for m in d['m_values']})}. {d['note']}. "
        "Zero-shot mean accuracy "
        f"{d['zero_shot']['mean']['accuracy']:.3f}. Recipe: {json.dumps(d['recipe'])}.",
        "",
        f"Covered ({'complete' if d['complete'] else 'partial'}): {covered}. Gains are in "
        "accuracy points with 95% paired-bootstrap intervals over seeds and test rows "
        "(core.stats); own = routing to the group's adapter, fit = fitted weights, ensemble = "
        "fitted weights + boosting.",
        "",
    ]
    lines += table(
        [
            "m",
            "seeds",
            "ensemble acc",
            "baseline acc",
            "gain",
            "own gain",
            "fit gain",
            "forwards/example",
            "FLOPs (paper)",
            "FLOPs (full)",
        ],
        [
            [
                m,
                len(g["seeds"]),
                fmt(g["ensemble_accuracy"]),
                fmt(g["baseline_accuracy"]),
                _gain(g["ensemble"]),
                _gain(g["own"]),
                _gain(g["fit"]) if "fit" in g else "n/a",
                f"{g['forwards_per_example']:.2f}",
                _x(g["flops_ratio_paper"]),
                _x(g["flops_ratio_full"]),
            ]
            for m, g in d["by_m"].items()
        ],
    )
    lines += ["", "Per run (steps: optimizer steps and epochs run under early stopping):", ""]
    lines += table(
        ["seed", "m", "ensemble acc", "baseline acc", "gain", "boosting", "baseline epochs/steps"],
        [
            [
                r["seed"],
                r["m"],
                fmt(r["ensemble"]["mean"]["accuracy"]),
                fmt(r["baseline"]["mean"]["accuracy"]),
                f"{r['gain_points']:+.1f}",
                "; ".join(f"{b['tasks']} step {b['step']:.2f}" for b in r["boosting"]) or "none",
                f"{r['baseline_record']['epochs_run']}/{r['baseline_record']['steps']}",
            ]
            for r in d["runs"]
        ],
    )
    rec = d["by_m"].get(str(d["recommended"]["m"]))
    if rec:
        lines += ["", f"Per task at m = {d['recommended']['m']} (wins/losses/ties over seeds):", ""]
        lines += table(
            ["task", "gain (points)", "wins", "losses", "ties"],
            [
                [t, f"{v['points']:+.1f}", v["wins"], v["losses"], v["ties"]]
                for t, v in rec["ensemble"]["per_task"].items()
            ],
        )
    return lines + [""]


OTHER = {
    "fastpath": lambda d: (
        "CPU fast path: "
        + ", ".join(
            f"{p} {v['seconds']['total']} s"
            + (f" ({v['speedup_vs_reference']['total']}x)" if "speedup_vs_reference" in v else "")
            for p, v in d["paths"].items()
        )
        + f" for features + train + zero-shot + retrain on "
        f"{', '.join(d['tasks'])}"
    ),
    "approximation": lambda d: (
        "first-order error of h against real forwards on SmolLM2 ("
        + ", ".join(d["settings"]["quantizations"])
        + "): suggested estimator.max_norm "
        f"{d['recommendation'].get('suggested_max_norm')}; real fine-tune weight change "
        + ", ".join(
            f"{q} {d['recommendation'][q]['finetune_rel_weight_change']:.2%}"
            for q in d["settings"]["quantizations"]
        )
    ),
    "features": lambda d: (
        f"gradient-feature extraction vs a training step (goal "
        f"{d['goal']}, met: {d['goal_met']}): "
        + ", ".join(f"{k} {v['all']['extract_over_train_step']}x" for k, v in d["results"].items())
    ),
    "sdp_timing": lambda d: (
        "SDP grouping time: "
        + ", ".join(
            f"n={r['n']} m={r['m']} {r['config']} {r['median_s']:.3g} s"
            for r in d["rows"]
            if r["config"] in ("sdp-clarabel", "spectral")
        )
    ),
    "memory": lambda d: (
        f"peak RSS per pipeline step on the full config (rows capped at {d['rows_per_split']}): "
        + ", ".join(f"{r['step']} {r['peak_rss_gib']} GiB" for r in d["steps"])
    ),
    "e2e": lambda d: (
        "grouptune run sample_data/quick.yaml: "
        + ", ".join(f"{k} {v['wall_seconds']} s" for k, v in d["runs"].items())
        + (f"; fast path {d['speedup']['total']}x" if "speedup" in d else "")
    ),
    "zero_shot_full": lambda d: (
        "zero-shot SmolLM2 on the full sample tasks' test splits: mean "
        f"accuracy {d['zero_shot']['mean']['accuracy']:.3f} over "
        f"{len(d['zero_shot']) - 1} tasks"
    ),
}


def md_agreement() -> list[str]:
    from agreement import markdown_lines

    return markdown_lines()


def md_paper_approximation() -> list[str]:
    """The first-order error under the paper's protocol and at real updates (approx_paper)."""
    r = _load("approx_paper")
    if r is None:
        return []
    s = r["summary"]
    lines = [
        "## c'. First-order approximation, measured two ways (bench/approx_paper.py)",
        "",
        "On the recipe GroupTune trains (A frozen at the features' init), unprojected gradients, "
        f"train rows of {len(r['subsets'])} subsets of `{r['workspace']}`: `{r['command']}`.",
        "",
        "- Paper protocol (the reference's fast_estimate_eval_approximation.py: the estimated "
        "update rescaled to s·‖θ*_LoRA‖, error (h0 + gᵀΔ − h)² / max(|h|, |h0|)² averaged over "
        "rows): " + ", ".join(f"s = {k}: {v:.3%}" for k, v in s["paper_protocol"].items()),
        "- At the real fine-tuned updates (‖ΔB‖ = "
        + ", ".join(f"{x:.2f}" for x in s["real_over_theta"])
        + " x ‖θ*_LoRA‖): the same error "
        f"{s['real_update_paper_error_train']:.3%}; relative error of the predicted change of h "
        f"{s['real_update_change_error_train']:.1%}",
        "",
    ]
    return lines


def md_sensitivity() -> list[str]:
    """The estimation error under other learning rates and trust regions (bench/sensitivity.py)."""
    path = ROOT / "bench" / "results" / "sensitivity.json"
    if not path.exists():
        return []
    sens = json.loads(path.read_text())
    lines = [
        "## a''. The previous estimator (argmin with a trust region): what moved its error "
        "(bench/sensitivity.py)",
        "",
        "Measured before the replay estimator and the A-frozen recipe became the defaults. "
        f"The same {sens['subsets']} subsets, re-estimated and (for another learning rate) "
        f"fine-tuned again: `{sens['command']}`.",
        "",
    ]
    head = ["setting", "loss rel. error", "acc. abs. error", "loss corr.", "predicted drop"]
    head += ["real drop", "max ‖ΔW‖/‖W‖", "max A change", "linear regime"]
    rows = []
    for v in sens["variants"]:
        s = v["summary"]
        rows.append(
            [v["label"], fmt(s["mean_loss_rel_error"], ".1%"), fmt(s["mean_accuracy_abs_error"])]
            + [fmt(s["loss_correlation"], ".2f"), fmt(s["mean_predicted_loss_drop"])]
            + [fmt(s["mean_real_loss_drop"]), fmt(s["max_weight_change"], ".2%")]
            + [fmt(s["max_a_change"], ".1%"), _holds(v["linear_regime"])]
        )
    return lines + table(head, rows) + [""]


def _load(name: str) -> dict | None:
    path = ROOT / "bench" / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def md_fastpath() -> list[str]:
    """The CPU fast path's targets (issue 8) from e2e.json, fastpath.json and memory.json."""
    e2e, fast, mem = _load("e2e"), _load("fastpath"), _load("memory")
    if not (e2e or fast or mem):
        return []
    lines = ["## CPU fast path (bench/e2e.py, bench/fastpath.py, bench/memory.py)", ""]
    if e2e:
        rows = [
            [k, fmt(v["wall_seconds"], ".0f"), fmt(v["estimation_seconds"], ".0f")]
            + [fmt(v["accuracy"]["ensemble"]["mean"]), fmt(v["accuracy"]["baseline"]["mean"])]
            for k, v in e2e["runs"].items()
        ]
        lines += table(
            ["grouptune run quick.yaml", "wall s", "estimation s", "ensemble acc", "baseline acc"],
            rows,
        )
        if "speedup" in e2e:
            lines += [
                "",
                f"Fast path over plain path: {e2e['speedup']['total']}x end to end, "
                f"{e2e['speedup']['estimation']}x for the estimation stage; same test "
                f"accuracies: {e2e['same_accuracy']}. Targets: whole run < 600 s, "
                "estimation < 120 s.",
            ]
        lines += [""]
    if fast:
        keys = ["features", "train", "zero_shot", "retrain", "total"]
        head = [f"path ({' + '.join(fast['tasks'])})", *keys]
        rows = []
        for name, p in fast["paths"].items():
            sp = p.get("speedup_vs_reference", {})
            rows.append([name] + [f"{p['seconds'][k]} s ({sp.get(k, '-')}x)" for k in keys])
        lines += table(head, rows)
        lines += [
            "",
            "Agreement with the reference (worst task): "
            + "; ".join(
                f"{n}: g corr {p['agreement_with_reference']['g_corr']}, g rel. diff "
                f"{p['agreement_with_reference']['g_rel_diff']}"
                for n, p in fast["paths"].items()
                if "agreement_with_reference" in p
            )
            + ".",
            "",
            "What-if (predict a new partition): "
            + ", ".join(
                f"{w['tasks']} tasks ({w['features']}) {w['full_partition_ms']} ms, one move "
                f"{w['move_one_task_ms']} ms"
                for w in fast.get("whatif", [])
            )
            + ". Targets: < 100 ms for 10 tasks, < 1 s for 100.",
            "",
        ]
    if mem:
        lines += [
            f"Peak memory, full config: {mem['max_peak_rss_gib']} GiB at most (target "
            f"{mem['target_gib']} GiB): "
            + ", ".join(f"{r['step']} {r['peak_rss_gib']}" for r in mem["steps"])
            + ".",
            "",
        ]
    return lines


def other_results() -> list[str]:
    lines = []
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        if path.stem in ("claims", "sensitivity", "approx_paper") or path.stem.startswith(
            "agreement-"
        ):  # sections of their own
            continue
        try:
            line = OTHER[path.stem](json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            line = f"(no summary line: {type(err).__name__} {err})"
        lines.append(f"- `bench/results/{path.name}`: {line}")
    return lines


# --- main -----------------------------------------------------------------------------------


def describe(cfg, args) -> str:
    d = cfg.data
    if args.smoke:
        return "Smoke run: the tests' tiny experiment (tiny-llama, 3 tiny tasks): no meaning."
    return (
        f"The full sample config ({args.config.name}: {len(cfg.tasks)} tasks, {cfg.model.name} "
        f"{cfg.model.quantization}, LoRA r={cfg.adapter.r}) reduced for time to {d.max_train} train / {d.max_val} val / "
        f"{d.max_test} test rows per task, {d.max_tokens} tokens, {cfg.training.epochs} epochs, "
        f"adapter on the top {cfg.adapter.top_layers} layers, {cfg.model.dtype} compute. "
        "Small data: accuracies move by 1/rows per example; read them as this config's, not "
        "the paper's setting (10 SuperGLUE tasks on Llama models)."
    )


PART_NAMES = {"a": "estimation", "b": "speedup", "c": "approximation", "d": "ensemble"}


def settings(cfg, args, ws) -> dict:
    keys = ("model", "adapter", "data", "features", "estimator", "training", "grouping", "ensemble")
    return {
        "description": describe(cfg, args),
        "workspace": str(ws.root),
        "subsets_requested": args.subsets,
        "config": {k: getattr(cfg, k).model_dump(mode="json") for k in keys},
        "tasks": cfg.task_names,
    }


def git_head() -> str | None:
    import subprocess

    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True)
    return out.stdout.decode().strip() or None


def run_all(args, cfg, ws) -> dict:
    """Run the parts asked for (--parts); the others are kept from the existing JSON, each
    with the provenance (settings, commit) it was measured with."""
    from machine import machine_info

    started, seconds = time.time(), {}
    old = read_json(args.out) if set(args.parts) != set(PART_NAMES) else None
    res = {
        "command": " ".join([".venv/bin/python", "bench/claims.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "settings": settings(cfg, args, ws),
        "paper": PAPER,
        "paper_values": PAPER_VALUES,
        "parts": {},
        "provenance": {},
    }
    here = {"settings": res["settings"]["config"], "commit": git_head(), "date": time.ctime()}
    for key, name in PART_NAMES.items():
        if key not in args.parts:
            res["parts"][name] = old["parts"][name]
            res["provenance"][name] = old.get("provenance", {}).get(name) or {
                "settings": old["settings"]["config"],
                "note": "kept from a run made before provenance was recorded",
            }
        else:
            res["provenance"][name] = here
    seconds["features"] = estimation_stage(cfg, ws)
    if {"a", "b", "c"} & set(args.parts):
        (a, subsets), seconds["a"] = timed(lambda: part_estimation(cfg, ws, args.subsets))
        say(f"a. mean loss rel. error {a['summary']['mean_loss_rel_error']:.1%}")
        b, seconds["b"] = timed(lambda: part_speedup(cfg, ws, subsets))
        c, seconds["c"] = timed(lambda: part_approximation(cfg, ws, subsets, a))
        res["parts"].update(estimation=a, speedup=b, approximation=c)
    if "d" in args.parts:

        def save(d):  # a partial part d, written with what it covers
            res["parts"]["ensemble"] = d
            write_result(args, {**res, "wall_seconds": round(time.time() - started, 1)})

        d, seconds["d"] = timed(lambda: part_ensemble(cfg, ws, args, save))
        res["parts"]["ensemble"] = d
    res["seconds_this_run"] = seconds
    res["wall_seconds"] = round(time.time() - started, 1)
    res["verdicts"] = verdicts(res)
    return res


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_result(args, res: dict) -> None:
    """claims.json, atomically (a partial result survives an interrupted run)."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, args.out)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "sample_data" / "full.yaml")
    p.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="default workspaces/bench-claims (--smoke: a temp dir)",
    )
    p.add_argument("--subsets", type=int, default=8, help="K estimated subsets fine-tuned")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4],
        help="paired training seeds of the recommended m",
    )
    p.add_argument(
        "--extra-seeds", type=int, default=3, help="the first N seeds also run m = 2, 3 and n"
    )
    p.add_argument(
        "--parts",
        nargs="+",
        choices=sorted(PART_NAMES),
        default=sorted(PART_NAMES),
        help="parts to run; the others are kept from --out",
    )
    p.add_argument("--max-train", type=int, default=100)
    p.add_argument("--max-val", type=int, default=50)
    p.add_argument("--max-test", type=int, default=150)
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--epochs", type=int, default=None, help="max epochs (default: the config's)")
    p.add_argument("--top-layers", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--smoke", action="store_true", help="tiny-llama experiment in a temp dir")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON (default bench/results/claims.json)"
    )
    p.add_argument("--markdown", type=Path, default=None, help="default bench/RESULTS.md")
    p.add_argument("--report-only", action="store_true", help="RESULTS.md from the JSON only")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="claims-smoke-")) if args.smoke else None
    args.smoke_dir = tmp
    args.workspace = args.workspace or (tmp / "ws" if tmp else ROOT / "workspaces" / "bench-claims")
    args.out = args.out or (tmp / "claims.json" if tmp else ROOT / "bench/results/claims.json")
    args.markdown = args.markdown or (
        args.out.parent / "RESULTS.md" if tmp else ROOT / "bench" / "RESULTS.md"
    )
    return args


def main() -> None:
    from core.workspace import Workspace

    args = parse_args()
    if not args.report_only:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        cfg = make_config(args)
        ws = Workspace(args.workspace).ensure()
        ws.save_config(cfg)
        write_result(args, run_all(args, cfg, ws))
    res = json.loads(args.out.read_text())
    res["verdicts"] = verdicts(res)  # from the parts, so --report-only follows this code
    res["out_name"] = os.path.relpath(args.out, ROOT) if ROOT in args.out.parents else args.out.name
    args.markdown.write_text(markdown(res))
    for v in res["verdicts"]:
        print(
            f"{v['claim']:20} paper: {v['paper']}\n{'':20} ours:  {v['grouptune']} "
            f"[{_holds(v['holds'])}]"
        )
    print(f"wrote {args.out} and {args.markdown}")


if __name__ == "__main__":
    main()
