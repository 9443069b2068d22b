"""How far to trust the estimate: fine-tune a few estimated subsets for real and compare.

The estimator (core.estimate.affinity, estimates/results.csv) predicts each task's val loss and accuracy
after fine-tuning on a subset S, from first-order features. It assumes the update stays in the
linear regime: A at its seeded init, B small. Here N of the subsets the estimator itself
sampled (estimates/subsets.json, so each has a prediction), picked so that every task appears
about equally often, are fine-tuned for real with the group adapters' recipe
(`core.train.trainer.train_adapter`, adapter `subset-<hash>`) and, for the noise ceiling, once more
with the next training seed (`subset-<hash>-s<seed>`), and compared:

  per (subset, task)  loss_rel_error = |predicted − real| / real   (val loss; real = val nll)
                      accuracy_abs_error = |predicted − real|       (val accuracy)
  summary             means of both, Pearson correlation of predicted vs real (3+ points),
                      and what grouping depends on (core.validate.agreement): within-task correlation
                      of loss and accuracy, same-task order agreement, error of the loss drop;
                      the same between the two real seeds is the noise ceiling
  per subset update   weight_change = ‖scaling·B·A‖_F / ‖W‖_F over the adapted matrices
                      a_change = ‖A − A0‖_F / ‖A0‖_F (A0: a fresh adapter with the config's seed)

Real values are the adapter's best epoch (grouptune.json val_metrics). The loss is comparable
only with features.target "choices" (both are the NLL over the answer words); with "vocab" the
prediction is a full-vocabulary cross-entropy and only accuracy is judged.

Verdict: the linear regime looks broken when any check fails (THRESHOLDS):
  mean loss_rel_error > 10%  ·  a_change > 10% (largest subset)  ·  weight_change > 5% (largest;
  the paper measures 0.1-0.2%)  ·  loss correlation < 0.5 (needs 3+ points and some spread)  ·
  order agreement more than 0.10 below the noise ceiling (needs both seeds).

N above the number of estimated subsets is clamped (the result keeps `requested`). A subset
adapter made with another model or recipe is trained again (it only serves this check).
CLI: `grouptune validate-estimate [--config C] --workspace WS --subsets N [--seeds 2]` submits
one `grouptune train-subset --task T ... --seed S` job per subset and seed, waits, then compares
(`--no-jobs`: inline).
`validate_estimate(cfg, ws, n)` is the whole step; <ws>/validation.json (atomic) holds
{"subsets", "rows", "summary", "verdict", "settings", "requested", "affinity_fingerprint",
"created"}; core.validate.trust is the dashboard's (torch-free) view of it.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import GroupTuneError
from core.validate.subsets import (
    DEFAULT_SEEDS,
    DEFAULT_SUBSETS,
    SEP,
    finished_record,
    pick_subsets,
    predictions,
    seeds_of,
    submit_training,
    subset_adapter,
    train_subset,
    wait_training,
)

THRESHOLDS = {
    "loss_rel_error": 0.10,  # mean |pred − real| / real above this
    "a_change": 0.10,  # ‖A − A0‖ / ‖A0‖ of any subset above this: A did not stay fixed
    "weight_change": 0.05,  # ‖ΔW‖ / ‖W‖ of any subset above this: the update is not small
    "loss_correlation": 0.5,  # predicted vs real loss correlation below this
    "order_gap": 0.10,  # order agreement this far below the noise ceiling
}


MIN_POINTS_FOR_CORRELATION = 3


def compare_rows(subsets, records: list[dict], table: pd.DataFrame) -> list[dict]:
    """Predicted vs real val metrics, one dict per (subset, task); subset_id = estimator's."""
    rows = []
    for tasks, record in zip(subsets, records, strict=True):
        key = SEP.join(tasks)
        predicted = table[table["subset"] == key].set_index("task")
        missing = [t for t in tasks if t not in predicted.index]
        if missing:
            raise GroupTuneError(
                f"estimates/results.csv has no prediction for {missing} in subset {key!r}; "
                "run `grouptune affinity` again"
            )
        for task in tasks:
            p, real = predicted.loc[task], record["val_metrics"][task]
            rows.append(
                {
                    "subset_id": int(p["subset_id"]),
                    "subset": key,
                    "adapter": record["name"],
                    "task": task,
                    "predicted_loss": float(p["loss"]),
                    "real_loss": float(real["nll"]),
                    "loss_rel_error": abs(float(p["loss"]) - real["nll"]) / real["nll"],
                    "predicted_accuracy": float(p["accuracy"]),
                    "real_accuracy": float(real["accuracy"]),
                    "accuracy_abs_error": abs(float(p["accuracy"]) - real["accuracy"]),
                    "base_loss": float(p["base_loss"]),
                    "base_accuracy": float(p["base_accuracy"]),
                }
            )
    return rows


def correlation(x, y) -> float | None:
    """Pearson correlation; None with fewer than 3 points or no spread (it says nothing then)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < MIN_POINTS_FOR_CORRELATION or x.std() < 1e-12 or y.std() < 1e-12:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def seed_rows(subsets, records: list[dict]) -> list[dict]:
    """(subset, task) val loss and accuracy of another seed's fine-tunes."""
    return [
        {
            "subset": SEP.join(tasks),
            "task": task,
            "loss": float(rec["val_metrics"][task]["nll"]),
            "accuracy": float(rec["val_metrics"][task]["accuracy"]),
        }
        for tasks, rec in zip(subsets, records, strict=True)
        for task in tasks
    ]


def grouping_measures(rows: list[dict], other_seed: list[dict] | None) -> dict:
    """What grouping depends on (core.validate.agreement), and the same between two real seeds."""
    from core.validate.agreement import agreement, bootstrap_interval, order_agreement

    df = pd.DataFrame(rows)
    mine = agreement(df)
    out = {k: mine[k] for k in AGREEMENT_KEYS}
    out["order_agreement_ci"] = bootstrap_interval(  # 95%, over the checked subsets
        df, lambda d: order_agreement(d, "predicted_loss", "real_loss"), n_boot=500
    )
    out["noise_ceiling_order_agreement"] = out["noise_ceiling_corr_loss"] = None
    out["noise_ceiling_corr_accuracy"] = None
    if other_seed:
        other = pd.DataFrame(other_seed).rename(
            columns={"loss": "other_loss", "accuracy": "other_accuracy"}
        )
        ceiling = agreement(df.merge(other, on=["subset", "task"]), pred="other")
        out["noise_ceiling_order_agreement"] = ceiling["order_agreement"]
        out["noise_ceiling_corr_loss"] = ceiling["within_task_corr_loss"]
        out["noise_ceiling_corr_accuracy"] = ceiling["within_task_corr_accuracy"]
    return out


AGREEMENT_KEYS = (
    "within_task_corr_loss",
    "within_task_corr_accuracy",
    "order_agreement",
    "drop_rel_error",
)


def summarize(rows: list[dict], updates: list[dict], other_seed: list[dict] | None = None) -> dict:
    """Error means, correlations, within-task agreement and its noise ceiling, and the largest
    update of any subset."""
    df = pd.DataFrame(rows)
    return {
        "n_subsets": len(updates),
        "n_points": len(df),
        "mean_loss_rel_error": float(df["loss_rel_error"].mean()),
        "mean_accuracy_abs_error": float(df["accuracy_abs_error"].mean()),
        "loss_correlation": correlation(df["predicted_loss"], df["real_loss"]),
        "accuracy_correlation": correlation(df["predicted_accuracy"], df["real_accuracy"]),
        "mean_predicted_loss_drop": float((df["base_loss"] - df["predicted_loss"]).mean()),
        "mean_real_loss_drop": float((df["base_loss"] - df["real_loss"]).mean()),
        "max_weight_change": max(u["weight_change"] for u in updates),
        "max_a_change": max(u["a_change"] for u in updates),
        **grouping_measures(rows, other_seed),
    }


def verdict(summary: dict, loss_comparable: bool = True) -> dict:
    """{"linear_regime": bool, "reasons": [...], "checks": {name: {value, threshold, ok}}};
    a check that cannot be measured has ok None and does not fail the verdict."""
    values = {
        "loss_rel_error": summary["mean_loss_rel_error"] if loss_comparable else None,
        "a_change": summary["max_a_change"],
        "weight_change": summary["max_weight_change"],
        "loss_correlation": summary["loss_correlation"] if loss_comparable else None,
        "order_gap": _order_gap(summary) if loss_comparable else None,
    }
    checks, reasons = {}, []
    for name, value in values.items():
        limit = THRESHOLDS[name]
        ok = None if value is None else _passes(name, value, limit)
        checks[name] = {"value": value, "threshold": limit, "ok": ok}
        if ok is False:
            reasons.append(_REASONS[name].format(value=value, limit=limit))
    return {"linear_regime": not reasons, "reasons": reasons, "checks": checks}


def _order_gap(summary: dict) -> float | None:
    mine, ceiling = summary.get("order_agreement"), summary.get("noise_ceiling_order_agreement")
    return None if mine is None or ceiling is None else ceiling - mine


def _passes(name: str, value: float, limit: float) -> bool:
    return value >= limit if name == "loss_correlation" else value <= limit


_REASONS = {
    "loss_rel_error": "predicted val loss is off by {value:.1%} on average (limit {limit:.0%})",
    "a_change": "the A matrices moved {value:.1%} from their init (limit {limit:.0%}); the "
    "estimator assumes A fixed",
    "weight_change": "a real update changes the adapted weights by {value:.2%} (limit "
    "{limit:.0%}); the estimator assumes a small update",
    "loss_correlation": "predicted and real losses correlate at {value:.2f} (limit {limit})",
    "order_gap": "the estimate orders a task's subsets {value:.0%} less often like the real "
    "fine-tunes than a second training seed does (limit {limit:.0%}): groupings rest on noise",
}


def base_norm(layer) -> float:
    """‖W‖_F of a LoRA layer's base matrix (bitsandbytes weights dequantised first)."""
    w = layer.get_base_layer().weight
    if getattr(w, "quant_state", None) is not None:  # 4-bit: numel() is half the true count
        import bitsandbytes.functional as bnbf

        w = bnbf.dequantize_4bit(w.data, w.quant_state)
    elif getattr(w, "SCB", None) is not None:  # 8-bit: int8 rows times their absmax / 127
        w = w.data.float() * w.SCB.float()[:, None] / 127
    return float(w.detach().float().norm())


def expansion_point(cfg) -> dict:
    """Per LoRA layer of a fresh seeded adapter: name -> (scaling, A0 (r, in) float64, ‖W‖_F)."""
    from core.models.adapters import attach_adapter, lora_layers
    from core.models.loading import load_model

    model, _ = load_model(cfg.model)
    peft_model = attach_adapter(model, cfg.adapter)
    return {
        name: (
            float(layer.scaling["default"]),
            layer.lora_A["default"].weight.detach().double().cpu(),
            base_norm(layer),
        )
        for name, layer in lora_layers(peft_model)
    }


def update_change(expansion: dict, adapter_file: Path) -> dict:
    """weight_change (total and largest matrix), a_change (total, largest) and ‖B‖_F of one
    adapter, read with safetensors; totals are ratios of root-sum-squares over the matrices."""
    from safetensors.torch import load_file

    weights = load_file(str(adapter_file))
    deltas, w_norms, moves, a0_norms, b_norms = [], [], [], [], []
    for name, (scaling, A0, w_norm) in expansion.items():
        try:
            A = weights[f"{name}.lora_A.weight"].double()
            B = weights[f"{name}.lora_B.weight"].double()
        except KeyError:
            raise GroupTuneError(
                f"{adapter_file}: no LoRA weights for layer {name}; it was trained with another "
                "adapter config (delete the folder and validate again)"
            ) from None
        deltas.append(scaling * float((B @ A).norm()))
        w_norms.append(w_norm)
        moves.append(float((A - A0).norm()))
        a0_norms.append(float(A0.norm()))
        b_norms.append(float(B.norm()))
    return {
        "weight_change": _rss(deltas) / _rss(w_norms),
        "weight_change_max_matrix": max(d / w for d, w in zip(deltas, w_norms, strict=True)),
        "a_change": _rss(moves) / _rss(a0_norms),
        "a_change_max_matrix": max(m / a for m, a in zip(moves, a0_norms, strict=True)),
        "b_norm": _rss(b_norms),
    }


def _rss(values: list[float]) -> float:
    """Root of the sum of squares: the Frobenius norm over all matrices from theirs."""
    return math.sqrt(sum(v * v for v in values))


def config_rows(cfg) -> dict:
    """{task: {"train": n, "val": n}} as the config caps them (what the estimate rests on)."""
    from core.data.sources import load_tasks

    return {t.name: {s: len(t.rows(s)) for s in ("train", "val")} for t in load_tasks(cfg)}


def compare(cfg, ws, subsets, requested: int | None = None, seeds=None) -> dict:
    """Compare the finished subset adapters with their predictions; write validation.json.
    `seeds`: the training seeds fine-tuned (default the config's); the second one gives the
    noise ceiling."""
    seeds = list(seeds or [cfg.training.seed])
    table = predictions(ws)
    records = [finished_record(ws, tasks) for tasks in subsets]
    rows = compare_rows(subsets, records, table)
    other = None
    if len(seeds) > 1:
        others = [finished_record(ws, t, subset_adapter(cfg, t, seeds[1])) for t in subsets]
        other = seed_rows(subsets, others)
    expansion = expansion_point(cfg)
    updates = []
    for tasks, record in zip(subsets, records, strict=True):
        change = update_change(
            expansion, ws.adapter_dir(record["name"]) / "adapter_model.safetensors"
        )
        updates.append(
            {
                "subset": SEP.join(tasks),
                "tasks": list(tasks),
                "adapter": record["name"],
                "best_epoch": record.get("best_epoch"),
                "epochs": record.get("epochs"),
                "train_wall_seconds": (record.get("accounting") or {}).get("wall_seconds"),
                **change,
            }
        )
    summary = summarize(rows, updates, other)
    comparable = cfg.features.target == "choices"
    result = {
        "subsets": updates,
        "rows": rows,
        "summary": summary,
        "verdict": verdict(summary, comparable),
        "settings": {
            "target": cfg.features.target,
            "loss_comparable": comparable,
            "thresholds": THRESHOLDS,
            "method": cfg.estimator.method,
            "reg": cfg.estimator.reg,
            "max_norm": cfg.estimator.max_norm,
            "seeds": seeds,
            "task_rows": config_rows(cfg),
        },
        "other_seed_rows": other,
        "requested": requested if requested is not None else len(subsets),
        "affinity_fingerprint": (ws.read("affinity.json") or {}).get("fingerprint"),
        "created": time.time(),
    }
    ws.write(result, "validation.json")
    return result


def validate_estimate(
    cfg,
    ws,
    n: int = DEFAULT_SUBSETS,
    jobs: bool = True,
    progress: bool = True,
    backend=None,
    n_seeds: int = DEFAULT_SEEDS,
) -> dict:
    """The whole step: pick n subsets, fine-tune each with n_seeds training seeds (one
    background job each, or inline with jobs=False), compare, write validation.json; return
    it. Rerunning resumes the fine-tunes."""
    subsets = pick_subsets(ws, n, cfg.task_names)
    seeds = seeds_of(cfg, n_seeds)
    predictions(ws)  # fail before any training when the predictions are missing
    if len(subsets) < n and progress:
        print(f"only {len(subsets)} estimated subsets: validating all of them", file=sys.stderr)
    if jobs:
        wait_training(ws, submit_training(cfg, ws, subsets, seeds, backend), progress)
    else:
        for seed in seeds:
            for tasks in subsets:
                train_subset(cfg, ws, tasks, progress, seed)
    return compare(cfg, ws, subsets, requested=n, seeds=seeds)
