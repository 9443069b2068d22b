"""The measured parts of bench/claims.py: (a) estimate against real fine-tunes, (b) speed-up, (c) approximation error; (d) is bench/claims_ensemble.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from claims_common import file_digest, ratio, say, timed


def estimation_stage(cfg, ws) -> dict:
    from core.pipeline import affinity, gradients

    say("features: gradient stores of every task (skipped when fresh)")
    _, t_feat = timed(lambda: gradients(cfg, ws))
    say(f"features done in {t_feat} s; affinity: the estimator scores its sampled subsets")
    _, t_aff = timed(lambda: affinity(cfg, ws))
    return {"features_seconds_this_run": t_feat, "affinity_seconds_this_run": t_aff}


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
    from core.validate.subsets import pick_subsets, predictions, train_subset
    from core.validate.validation import compare

    subsets = pick_subsets(ws, k, cfg.task_names)
    predictions(ws)  # fail before any training when the estimates are missing
    for i, tasks in enumerate(subsets):
        say(f"a. real fine-tune {i + 1}/{len(subsets)}: {'+'.join(tasks)}")
        train_subset(cfg, ws, tasks, progress=False)
    # the paper's estimation error: each subset against one real fine-tune (the config's
    # seed); bench/agreement.py scores against several seeds
    v = compare(cfg, ws, subsets, requested=k, seeds=[cfg.training.seed])
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
        "source": "validation.json (core.validate.validation)",
        "loss_comparable": v["settings"]["loss_comparable"],
        "summary": {key: v["summary"][key] for key in SUMMARY_KEYS},
        "verdict": v["verdict"],
        "per_task": per_task,
        "rows": rows,
        "subsets": v["subsets"],
    }
    return out, subsets


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
    from core.estimate.affinity import score_subsets
    from core.estimate.fitter import fitter
    from core.gradients.store import load_features

    feats, t_load = timed(lambda: {t: load_features(ws, t) for s in subsets for t in s})
    fit = fitter(cfg)
    runs = [timed(lambda: score_subsets(feats, subsets, fit, False))[1] for _ in range(3)]
    return {"wall_seconds": float(np.median(runs)), "load_seconds": t_load, "runs": runs}


def part_speedup(cfg, ws, subsets) -> dict:
    from core.accounting import Accounting
    from core.validate.subsets import finished_record

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


def expansion(cfg, tasks: list[str]):
    """The seeded adapter (B = 0) in float32 compute, its val batches with h0 and unprojected g
    of the config's target, and lower layers cached for the real forwards."""
    import approximation_model as apm
    import approximation_setup as aps
    import torch

    from core.gradients.extract import load_extraction_model
    from core.gradients.per_example import batch_features
    from core.models.adapters import layers_to_transform

    fcfg = cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"dtype": "float32"}),
            "tasks": [t for t in cfg.tasks if t.name in tasks],
        }
    )
    model, tok, _ = load_extraction_model(fcfg)
    weights = apm.lora_weights(model)
    A0 = [a.detach().clone() for a, _, _ in weights]
    B0 = [torch.zeros_like(b) for _, b, _ in weights]
    batches = aps.val_batches(fcfg, tok, cfg.features.batch_size)
    target = cfg.features.target
    for b in batches:
        f = batch_features(model, b.inputs, b.choice_ids, b.gold, target, "train")
        b.h0[target], b.g[target] = f["h"].numpy().astype(np.float64), f["g"].numpy()
    cache = aps.LowerLayerCache(model, min(layers_to_transform(model, cfg.adapter.top_layers)))
    cache.fill(batches)
    return model, weights, A0, B0, batches, cache


def real_h(model, weights, As, Bs, batches, target) -> np.ndarray:
    import approximation_model as apm

    apm.set_adapter(weights, As, Bs)
    return np.concatenate([r["h"][target] for r in apm.real_forward(model, batches, cached=True)])


def subset_errors(ctx, adapter_file: Path, tasks, target: str) -> dict:
    """Real h (fine-tuned A and B; B only) vs h0 + g·vec(ΔB) on the subset's val rows."""
    import approximation_model as apm

    from core.train.run import load_adapter_weights

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
        m = apm.error_metrics(h0, h, pred, row_task)
        out[kind] = {
            **m,
            "per_task_paper_rse_mean": {
                t: apm.error_metrics(
                    h0[row_task == t],
                    h[row_task == t],
                    pred[row_task == t],
                    row_task[row_task == t],
                )["paper_rse_mean"]
                for t in dict.fromkeys(row_task)
            },
        }
    apm.set_adapter(weights, A0, B0)
    return out


def part_approximation(cfg, ws, subsets, estimation: dict) -> dict:
    """Per subset adapter of (a); cached in <ws>/claims/approximation.json by adapter weights."""
    from core.validate.subsets import adapter_name

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


def choose_ms(cfg, ws) -> tuple[int, dict, dict]:
    """The recommended m, the sweep's partition for every m, and the recommendation; through
    pipeline.sweep only, so groupings/chosen.json is left as it is."""
    from core.grouping.choose import recommend_m
    from core.pipeline import sweep

    entries = [e for e in sweep(cfg, ws) if e["method"] == cfg.grouping.method]
    rec, _, reason = recommend_m(entries)
    return rec, {e["m"]: e["groups"] for e in entries}, {"m": rec, "reason": reason}


def part_ensemble(cfg, ws, args, save) -> dict:
    """Part d (bench/claims_ensemble.py): `save(d)` is called with the partial result."""
    from claims_ensemble import part_ensemble as run

    return run(cfg, ws, choose_ms, args.seeds, args.seeds[: args.extra_seeds], save)
