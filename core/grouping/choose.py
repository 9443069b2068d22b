"""Choosing m: every m (and method) partitioned and scored by the what-if's predicted accuracy, and the recommendation, which takes a larger m only when its predicted gain beats the prediction's own uncertainty."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from core.grouping.methods import SWEPT, method_class
from core.grouping.partition import (
    GroupingError,
    check_m,
    check_names,
    labels_to_groups,
    validate_affinity,
)
from core.progress import computing

Predict = Callable[[list[list[str]]], dict[str, dict[str, float]]]


def _checked_prediction(pred, names: list[str]) -> dict[str, dict[str, float]]:
    """Copy a predict() result, checking it has finite "loss" and "accuracy" for every task."""
    if not isinstance(pred, dict) or set(pred) != set(names):
        got = sorted(pred) if isinstance(pred, dict) else type(pred).__name__
        raise GroupingError(f"predict must return a dict keyed by every task {names}, got {got}")
    out = {}
    for task in names:
        row = {k: float(v) for k, v in dict(pred[task]).items()}
        if not all(np.isfinite(row.get(k, np.nan)) for k in ("loss", "accuracy")):
            raise GroupingError(f"predict gave no finite loss and accuracy for task {task!r}")
        out[task] = row
    return out


def scored(est, names: list[str], predict: Predict, cache: dict | None = None) -> dict:
    """One candidate: a fitted grouping method's partition with the what-if's prediction
    (`cache`, keyed by the partition, lets methods that agree share one predict call)."""
    groups = labels_to_groups(est.labels_, names)
    key = tuple(map(tuple, groups))
    cache = {} if cache is None else cache
    if key not in cache:
        cache[key] = _checked_prediction(predict([list(g) for g in groups]), names)
    predicted = {t: dict(row) for t, row in cache[key].items()}
    m, n = len(groups), len(names)
    return {
        "m": m,
        "method": est.name,
        "groups": groups,
        "objective": est.objective_,
        "predicted": predicted,
        "mean_accuracy": float(np.mean([predicted[t]["accuracy"] for t in names])),
        "mean_loss": float(np.mean([predicted[t]["loss"] for t in names])),
        "fallback": getattr(est, "fallback_reason_", None),
        "baseline": "all-in-one" if m == 1 else "singletons" if m == n else None,
    }


@computing()  # the group step's compute: a partition and a what-if prediction per m
def sweep(
    T,
    names,
    predict: Predict,
    m_values=None,
    methods=SWEPT,
    random_state=0,
) -> list[dict]:
    """Group the tasks for every m and method, and score each partition with `predict`.

    predict(groups) -> {task: {"loss": float, "accuracy": float, ...}} is the estimator's
    what-if API; it is called once per distinct partition (methods that agree share the call).
    m_values defaults to 1..n; m = 1 (all-in-one) and m = n (singletons), the trivial baselines,
    are always included. One entry per (m, method), sorted by m then method order, even when two
    methods give the same partition (each curve stays complete):
    {"m", "method", "groups", "objective", "predicted", "mean_accuracy", "mean_loss",
     "fallback" (why the SDP was not used, else None), "baseline" ("all-in-one", "singletons"
     or None)}.
    """
    names = check_names(names)
    T = validate_affinity(T, names)
    n = len(names)
    classes = [method_class(method) for method in methods]
    ms = sorted(
        {1, n} | {check_m(m, n) for m in (range(1, n + 1) if m_values is None else m_values)}
    )
    cache: dict[tuple, dict] = {}
    return [
        scored(cls(m=m, random_state=random_state).fit(T), names, predict, cache)
        for m in ms
        for cls in classes
    ]


def recommend_m(
    sweep_entries: Sequence[dict], tolerance: float = 0.005, uncertainty: float | None = None
) -> tuple[int, str, str]:
    """Pick (m, method, reason) from `sweep` output.

    Rule: among entries whose predicted mean accuracy is within max(`tolerance`, 2 ·
    `uncertainty`) of the best entry's (absolute, in accuracy units), take the smallest m,
    since every group is one more adapter to train and serve. `uncertainty` is one standard
    error of a predicted mean accuracy (`prediction_uncertainty`): differences smaller than
    twice that are not told apart. Ties at that m go to the lower predicted mean loss, then to
    the earlier entry (sweep order: the first method listed).
    """
    entries = list(sweep_entries)
    if not entries:
        raise GroupingError("recommend_m needs at least one sweep entry")
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise GroupingError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if uncertainty is not None and not (np.isfinite(uncertainty) and uncertainty >= 0):
        raise GroupingError(f"uncertainty must be a finite number >= 0, got {uncertainty!r}")
    band = max(tolerance, 2.0 * (uncertainty or 0.0))
    best = max(entries, key=lambda e: e["mean_accuracy"])
    near = [e for e in entries if e["mean_accuracy"] >= best["mean_accuracy"] - band]
    pick = min(near, key=lambda e: (e["m"], e["mean_loss"]))  # min() keeps the first of ties
    alike = sorted({e["m"] for e in near})
    why = f"{tolerance:g}" if band == tolerance else f"2 x {uncertainty:.4f} (its uncertainty)"
    reason = (
        f"m={pick['m']} ({pick['method']}) predicts mean accuracy {pick['mean_accuracy']:.4f}, "
        f"within {why} of the best {best['mean_accuracy']:.4f} (m={best['m']}, "
        f"{best['method']}); it is the fewest groups (adapters) that close. The estimate cannot "
        f"tell apart m in {alike}"
    )
    return pick["m"], pick["method"], reason


def prediction_uncertainty(entry: dict, val_rows: dict, point_error: float | None = None):
    """One standard error of an entry's predicted mean accuracy over its n tasks.

    From the real fine-tunes of validate-estimate when there are some (`point_error`: the
    root-mean-square of predicted − real accuracy per (subset, task); errors of the tasks taken
    as independent: point_error / sqrt(n)); else the sampling error of accuracies measured on
    `val_rows[task]` rows, sqrt(Σ p(1 − p) / rows) / n. Returns a float.
    """
    pred = entry["predicted"]
    n = len(pred)
    if point_error is not None:
        return float(point_error / np.sqrt(n))
    var = sum(p["accuracy"] * (1 - p["accuracy"]) / max(1, val_rows[t]) for t, p in pred.items())
    return float(np.sqrt(var) / n)
