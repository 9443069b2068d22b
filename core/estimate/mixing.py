"""Mixing weights before training: how much of each dataset, estimated in seconds.

An adapter trains on the union of its tasks' rows, and training.mix trades an epoch's rows
between them (core.recipe.epoch_plan: task t's share ∝ n_t·w_t, the epoch's row count fixed).
The estimate of the expected fine-tune (the recipe replayed over several batch orders on the
stored features, core.estimate.replay.expected_replay) follows the same plan, so any weights
are scored without training:

  predict_mix(features, tcfg, orders, weights)   per task: predicted val loss and accuracy
  suggest_mix(features, tcfg, orders, ...)       weights that minimise the mean predicted val
                                                 loss (or maximise accuracy), optionally with
                                                 every task protected: none predicted worse
                                                 than under uniform weights

Rows are whole, so the predictions are piecewise constant in the weights: the search is
gradient-free (scipy's Nelder-Mead on w = n·softmax(z), uniform at z = 0).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax

from core.errors import GroupTuneError
from core.estimate.estimator import score, task_name
from core.estimate.replay import expected_replay

OBJECTIVES = ("loss", "accuracy")
INFEASIBLE = 1e6  # the cost of weights that leave a protected task below its uniform result


def predict_mix(features: list, tcfg, orders: int, weights: dict | None) -> dict[str, dict]:
    """{task: {"loss", "accuracy", "base_loss", "base_accuracy"}} of the expected fine-tune on
    the tasks' union with training.mix = `weights` (None or {}: uniform)."""
    names = [task_name(tf) for tf in features]
    mixed = tcfg.model_copy(update={"mix": dict(weights or {})})
    fit = expected_replay(features, mixed, orders)
    return {name: score(tf, fit) for name, tf in zip(names, features, strict=True)}


def _mean(pred: dict, objective: str) -> float:
    sign = 1.0 if objective == "loss" else -1.0  # minimised
    return sign * float(np.mean([p[objective] for p in pred.values()]))


def suggest_mix(
    features: list,
    tcfg,
    orders: int,
    objective: str = "loss",
    protect: bool = False,
    max_evaluations: int = 60,
) -> dict:
    """Weights for the tasks of `features` (one adapter's), found by a gradient-free search
    from uniform. Returns {"weights", "predicted", "uniform", "effect" (predicted − uniform per
    task and "mean"), "objective", "protect", "evaluations"}; never worse than uniform on the
    objective (uniform is kept when nothing beats it)."""
    if objective not in OBJECTIVES:
        raise GroupTuneError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    names = [task_name(tf) for tf in features]
    if len(names) < 2:
        raise GroupTuneError("mixing weights need an adapter of at least 2 tasks")
    uniform = predict_mix(features, tcfg, orders, None)
    cache: dict[tuple, dict] = {}

    def weights_of(z) -> dict[str, float]:
        w = len(names) * softmax(np.asarray(z, dtype=float))
        return {n: round(float(v), 4) for n, v in zip(names, w, strict=True)}

    def cost(z) -> float:
        w = weights_of(z)
        key = tuple(w.values())
        if key not in cache:
            cache[key] = predict_mix(features, tcfg, orders, w)
        pred = cache[key]
        short = sum(_shortfall(pred[n], uniform[n], objective) for n in names) if protect else 0
        return _mean(pred, objective) + (INFEASIBLE + short if short > 0 else 0.0)

    start = np.zeros(len(names))
    simplex = np.vstack([start, *(0.7 * np.eye(len(names)))])  # first steps: w_t about ×2
    res = minimize(cost, start, method="Nelder-Mead",
                   options={"initial_simplex": simplex, "maxfev": max_evaluations,
                            "xatol": 0.05, "fatol": 1e-5})  # fmt: skip
    best = weights_of(res.x) if res.fun < cost(start) else dict.fromkeys(names, 1.0)
    predicted = cache.get(tuple(best.values())) or predict_mix(features, tcfg, orders, best)
    return {
        "weights": best,
        "predicted": predicted,
        "uniform": uniform,
        "effect": effect(predicted, uniform),
        "objective": objective,
        "protect": protect,
        "evaluations": len(cache),
    }


def _shortfall(pred: dict, uniform: dict, objective: str) -> float:
    """How far a task is predicted worse than under uniform weights (0 when it is not)."""
    if objective == "loss":
        return max(0.0, pred["loss"] - uniform["loss"])
    return max(0.0, uniform["accuracy"] - pred["accuracy"])


def effect(predicted: dict, uniform: dict) -> dict:
    """Per task (and "mean"): predicted − uniform, for loss and accuracy."""
    out = {n: {k: predicted[n][k] - uniform[n][k] for k in ("loss", "accuracy")} for n in predicted}
    out["mean"] = {k: float(np.mean([out[n][k] for n in predicted])) for k in ("loss", "accuracy")}
    return out
