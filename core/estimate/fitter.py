"""The estimate's entry point: the configured estimator as one function, subset features -> update.

`fitter(cfg)` returns `fit(features) -> core.estimate.estimator.FitResult` for the tasks' TaskFeatures
(in training order); `core.estimate.estimator.predict(tf, fit.w)` then scores each task. The affinity
step (whose estimates validate-estimate checks) and the what-if both call it, so they always
use the same estimator.
"""

from __future__ import annotations

from collections.abc import Callable

from core.estimate.estimator import FitResult, fit_arrays, train_arrays
from core.estimate.replay import replay

Fitter = Callable[[list], FitResult]


def fitter(cfg) -> Fitter:
    """The estimator of cfg.estimator.method: the recipe's replay, or the paper's argmin."""
    e = cfg.estimator
    if e.method == "replay":
        tcfg = cfg.training
        return lambda features: replay(features, tcfg)
    return argmin_fitter(e.reg, e.max_norm)


def argmin_fitter(reg: float | None, max_norm: float | None, balance: bool = False) -> Fitter:
    return lambda features: fit_arrays(*train_arrays(features, balance), reg, max_norm)


def settings(cfg) -> dict:
    """What an estimate depends on besides the features (part of the affinity fingerprint)."""
    e = cfg.estimator
    if e.method == "replay":
        t = cfg.training.model_dump(mode="json")
        return {"method": "replay", "training": t}
    return {"method": "argmin", "reg": e.reg, "max_norm": e.max_norm}
