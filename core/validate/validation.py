"""How far to trust the estimate: fine-tune a few estimated subsets for real and compare.

The estimator (core.estimate.affinity, estimates/results.csv) predicts each task's val loss and
accuracy after fine-tuning on a subset S: by default the EXPECTED fine-tune (the recipe replayed
over several batch orders that no real run uses), since a grouping decides about adapters that
will be trained once, with a seed no estimate was given. Here N of the subsets the estimator
itself sampled (estimates/subsets.json, so each has a prediction), picked so that every task
appears about equally often, are fine-tuned for real with the group adapters' recipe
(`core.train.trainer.train_adapter`) with several training seeds (the config's: adapter
`subset-<hash>`; the next ones: `subset-<hash>-s<seed>`), and compared:

  per (subset, task)  real = the mean over the seeds (each seed's values kept in real_by_seed)
                      loss_rel_error = |predicted − real| / real   (val loss; real = val nll)
                      accuracy_abs_error = |predicted − real|       (val accuracy)
  summary             means of both, Pearson correlation of predicted vs real (3+ points),
                      and what grouping depends on (core.validate.agreement.fair_agreement):
                      order_agreement_vs_mean and within_task_corr_{loss,accuracy}_vs_mean,
                      with 95% intervals over the subsets, beside the leave-one-seed-out
                      ceiling (ceiling_*_loo: one real seed against the others' mean), seeds,
                      pairs; the replay of each seed's own batch order against that seed
                      (*_seed_matched) is kept beside them, never as the headline
  per subset update   weight_change = ‖scaling·B·A‖_F / ‖W‖_F over the adapted matrices
                      a_change = ‖A − A0‖_F / ‖A0‖_F (A0: a fresh adapter with the config's seed)

Real values are the adapter's best epoch (grouptune.json val_metrics). The loss is comparable
only with features.target "choices" (both are the NLL over the answer words); with "vocab" the
prediction is a full-vocabulary cross-entropy and only accuracy is judged. The estimates are
brought up to date with the config first (a new recipe changes what is predicted).

Verdict, two questions kept apart (THRESHOLDS):
  linear regime: it looks broken when any of these fails: mean loss_rel_error > 10%  ·
    a_change > 10% (largest subset)  ·  weight_change > 5% (largest; the paper measures
    0.1-0.2%)  ·  loss correlation < 0.5 (needs 3+ points and some spread);
  ranking: the estimate orders a task's subsets more than 0.10 less often like the seeds' mean
    than one real fine-tune does (needs 2+ seeds). The update can be small and the losses close
    while the ranking is still below the seeds' own noise; the trust panel headlines it.

N above the number of estimated subsets is clamped (the result keeps `requested`). A subset
adapter made with another model or recipe is trained again (it only serves this check).
CLI: `grouptune validate-estimate [--config C] --workspace WS --subsets N [--seeds 3]` submits
one `grouptune train-subset --task T ... --seed S` job per subset and seed, waits, then compares
(`--no-jobs`: inline).
`validate_estimate(cfg, ws, n)` is the whole step; <ws>/validation.json (atomic) holds
{"subsets", "rows", "summary", "verdict", "settings", "requested", "affinity_fingerprint",
"created"}; core.validate.trust is the dashboard's (torch-free) view of it.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from core.artifacts import AFFINITY, VALIDATION
from core.errors import GroupTuneError
from core.validate.subsets import (
    DEFAULT_SEEDS,
    DEFAULT_SUBSETS,
    SEP,
    estimated_subsets,
    finished_record,
    pick_subsets,
    predictions,
    seeded,
    seeds_of,
    submit_training,
    subset_adapter,
    train_subset,
    wait_training,
)
from core.validate.update_size import expansion_point, update_change

THRESHOLDS = {
    "loss_rel_error": 0.10,  # mean |pred − real| / real above this
    "a_change": 0.10,  # ‖A − A0‖ / ‖A0‖ of any subset above this: A did not stay fixed
    "weight_change": 0.05,  # ‖ΔW‖ / ‖W‖ of any subset above this: the update is not small
    "loss_correlation": 0.5,  # predicted vs real loss correlation below this
    "order_gap": 0.10,  # order agreement this far below the noise ceiling
}


MIN_POINTS_FOR_CORRELATION = 3


def compare_rows(subsets, records: dict, table: pd.DataFrame) -> list[dict]:
    """Predicted vs real val metrics, one dict per (subset, task); subset_id = estimator's.

    records: {seed: [grouptune.json per subset]}; "real" is the mean over the seeds (the
    expected fine-tune the estimate predicts), "real_by_seed" each seed's values."""
    seeds = list(records)
    rows = []
    for i, tasks in enumerate(subsets):
        key = SEP.join(tasks)
        predicted = table[table["subset"] == key].set_index("task")
        missing = [t for t in tasks if t not in predicted.index]
        if missing:
            raise GroupTuneError(
                f"estimates/results.csv has no prediction for {missing} in subset {key!r}; "
                "run `grouptune affinity` again"
            )
        for task in tasks:
            p = predicted.loc[task]
            each = {s: records[s][i]["val_metrics"][task] for s in seeds}
            loss = float(np.mean([m["nll"] for m in each.values()]))
            acc = float(np.mean([m["accuracy"] for m in each.values()]))
            rows.append(
                {
                    "subset_id": int(p["subset_id"]),
                    "subset": key,
                    "adapter": records[seeds[0]][i]["name"],
                    "task": task,
                    "predicted_loss": float(p["loss"]),
                    "real_loss": loss,
                    "loss_rel_error": abs(float(p["loss"]) - loss) / loss,
                    "predicted_accuracy": float(p["accuracy"]),
                    "real_accuracy": acc,
                    "accuracy_abs_error": abs(float(p["accuracy"]) - acc),
                    "base_loss": float(p["base_loss"]),
                    "base_accuracy": float(p["base_accuracy"]),
                    "real_by_seed": {
                        str(s): {"loss": float(m["nll"]), "accuracy": float(m["accuracy"])}
                        for s, m in each.items()
                    },
                }
            )
    return rows


def wide_rows(rows: list[dict]) -> pd.DataFrame:
    """The compared rows with each seed's real loss and accuracy as columns loss@<seed>,
    accuracy@<seed> (core.validate.agreement.seeds_wide's layout)."""
    df = pd.DataFrame(rows)
    for seed in rows[0]["real_by_seed"]:
        for metric in ("loss", "accuracy"):
            df[f"{metric}@{seed}"] = [r["real_by_seed"][seed][metric] for r in rows]
    return df.drop(columns=["real_by_seed"])


def correlation(x, y) -> float | None:
    """Pearson correlation; None with fewer than 3 points or no spread (it says nothing then)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < MIN_POINTS_FOR_CORRELATION or x.std() < 1e-12 or y.std() < 1e-12:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def grouping_measures(rows: list[dict], matched: dict | None = None) -> dict:
    """What grouping depends on, scored the way a grouping uses the estimate: against the mean
    of the real seeds, beside the leave-one-seed-out ceiling, with 95% intervals over the
    checked subsets (core.validate.agreement.fair_agreement); plus, when given (`matched`:
    {seed: predictions of that seed's own batch order}), the seed-matched figures."""
    from core.validate.agreement import drop_rel_error, fair_agreement, seed_matched

    wide = wide_rows(rows)
    out = fair_agreement(wide)
    out["drop_rel_error"] = drop_rel_error(wide, "predicted_loss", "real_loss", "base_loss")
    if matched:
        out.update(seed_matched(wide, matched))
    else:
        out.update(order_agreement_seed_matched=None, within_task_corr_loss_seed_matched=None)
    return out


def seed_matched_predictions(cfg, ws, subsets, seeds) -> dict | None:
    """{seed: predictions} of the replay of each seed's own batch order (the run that seed
    really trained): what the seed-matched figures score. None for argmin (no batch order)."""
    if cfg.estimator.method != "replay":
        return None
    from core.estimate.estimator import predict
    from core.estimate.replay import replay
    from core.gradients.store import load_features

    feats = {t: load_features(ws, t) for t in {t for s in subsets for t in s}}
    out = {}
    for seed in seeds:
        rows = []
        for tasks in subsets:
            fs = [feats[t] for t in tasks]
            w = replay(fs, seeded(cfg, seed).training).w
            for task, tf in zip(tasks, fs, strict=True):
                p = predict(tf, w)
                rows.append({"subset": SEP.join(tasks), "task": task,
                             "predicted_loss": p["loss"], "predicted_accuracy": p["accuracy"]})  # fmt: skip
        out[seed] = pd.DataFrame(rows)
    return out


def summarize(rows: list[dict], updates: list[dict], matched: dict | None = None) -> dict:
    """Error means, correlations, within-task agreement against the seeds' mean and its
    leave-one-seed-out ceiling, and the largest update of any subset."""
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
        **grouping_measures(rows, matched),
    }


LINEAR_CHECKS = ("loss_rel_error", "a_change", "weight_change", "loss_correlation")


def verdict(summary: dict, loss_comparable: bool = True) -> dict:
    """{"linear_regime": bool, "reasons": [...] (the linear checks that failed),
    "ranking_ok": bool or None, "ranking_reason": str or None,
    "checks": {name: {value, threshold, ok}}};
    a check that cannot be measured has ok None and fails nothing."""
    values = {
        "loss_rel_error": summary["mean_loss_rel_error"] if loss_comparable else None,
        "a_change": summary["max_a_change"],
        "weight_change": summary["max_weight_change"],
        "loss_correlation": summary["loss_correlation"] if loss_comparable else None,
        "order_gap": _order_gap(summary) if loss_comparable else None,
    }
    checks, failed = {}, {}
    for name, value in values.items():
        limit = THRESHOLDS[name]
        ok = None if value is None else _passes(name, value, limit)
        checks[name] = {"value": value, "threshold": limit, "ok": ok}
        if ok is False:
            failed[name] = _REASONS[name].format(value=value, limit=limit)
    reasons = [r for n, r in failed.items() if n in LINEAR_CHECKS]
    return {
        "linear_regime": not reasons,
        "reasons": reasons,
        "ranking_ok": checks["order_gap"]["ok"],
        "ranking_reason": failed.get("order_gap"),
        "checks": checks,
    }


def _order_gap(summary: dict) -> float | None:
    mine = summary.get("order_agreement_vs_mean")
    ceiling = summary.get("ceiling_order_agreement_loo")
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
    "order_gap": "the estimate orders a task's subsets {value:.0%} less often like the mean of "
    "the real fine-tunes than one real fine-tune does (limit {limit:.0%}): groupings rest on "
    "noise",
}


def config_rows(cfg) -> dict:
    """{task: {"train": n, "val": n}} as the config caps them (what the estimate rests on)."""
    from core.data.sources import load_tasks

    return {t.name: {s: len(t.rows(s)) for s in ("train", "val")} for t in load_tasks(cfg)}


def compare(cfg, ws, subsets, requested: int | None = None, seeds=None) -> dict:
    """Compare the finished subset adapters of every seed with their predictions; write
    validation.json. `seeds`: the training seeds fine-tuned (default DEFAULT_SEEDS of them,
    from the config's)."""
    seeds = list(seeds or seeds_of(cfg, DEFAULT_SEEDS))
    table = predictions(ws)
    records = {
        s: [finished_record(ws, t, subset_adapter(cfg, t, s)) for t in subsets] for s in seeds
    }
    rows = compare_rows(subsets, records, table)
    expansion = expansion_point(cfg)
    updates = []
    for tasks, record in zip(subsets, records[seeds[0]], strict=True):
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
    summary = summarize(rows, updates, seed_matched_predictions(cfg, ws, subsets, seeds))
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
            "orders": cfg.estimator.orders if cfg.estimator.method == "replay" else None,
            "reg": cfg.estimator.reg,
            "max_norm": cfg.estimator.max_norm,
            "seeds": seeds,
            "task_rows": config_rows(cfg),
        },
        "requested": requested if requested is not None else len(subsets),
        "affinity_fingerprint": (AFFINITY.read(ws) or {}).get("fingerprint"),
        "created": time.time(),
    }
    VALIDATION.write(ws, result)
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
    from core.estimate.affinity import compute_affinity

    estimated_subsets(ws), predictions(ws)  # fail before any work if the estimator never ran
    # the estimates must be those of this config: a new recipe (lr, epochs, …) or estimator
    # changes what is predicted, so they are recomputed first (refused if the features are
    # stale: core.gradients.store)
    compute_affinity(cfg, ws, progress=False)
    subsets = pick_subsets(ws, n, cfg.task_names)
    seeds = seeds_of(cfg, n_seeds)
    if len(subsets) < n and progress:
        print(f"only {len(subsets)} estimated subsets: validating all of them", file=sys.stderr)
    if jobs:
        wait_training(ws, submit_training(cfg, ws, subsets, seeds, backend), progress)
    else:
        for seed in seeds:
            for tasks in subsets:
                train_subset(cfg, ws, tasks, progress, seed)
    return compare(cfg, ws, subsets, requested=n, seeds=seeds)
