"""The estimate's entry point: the configured estimator as one function, subset features -> update.

`fitter(cfg)` returns `fit(features) -> core.estimate.estimator.FitResult` for the tasks' TaskFeatures
(in training order); `core.estimate.estimator.predict(tf, fit.w)` then scores each task. The affinity
step (whose estimates validate-estimate checks) and the what-if both call it, so they always
use the same estimator.
"""

from __future__ import annotations

from collections.abc import Callable

from core.estimate.estimator import FitResult, fit_arrays, train_arrays
from core.estimate.replay import expected_replay

Fitter = Callable[[list], FitResult]


def fitter(cfg) -> Fitter:
    """The estimator of cfg.estimator.method: the recipe's replay averaged over
    estimator.orders batch orders (the expected fine-tune), or the paper's argmin."""
    e = cfg.estimator
    if e.method == "replay":
        tcfg, orders = cfg.training, e.orders
        return lambda features: expected_replay(features, tcfg, orders)
    return argmin_fitter(e.reg, e.max_norm)


def argmin_fitter(reg: float | None, max_norm: float | None, balance: bool = False) -> Fitter:
    return lambda features: fit_arrays(*train_arrays(features, balance), reg, max_norm)


def settings(cfg) -> dict:
    """What an estimate depends on besides the features (part of the affinity fingerprint)."""
    e = cfg.estimator
    if e.method == "replay":
        t = cfg.training.model_dump(mode="json", exclude=set() if cfg.training.mix else {"mix"})
        return {"method": "replay", "orders": e.orders, "training": t}
    return {"method": "argmin", "reg": e.reg, "max_norm": e.max_norm}
