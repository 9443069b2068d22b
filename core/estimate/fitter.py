"""The estimate's entry point: the configured estimator as one function, subset features -> update.

`fitter(cfg)` returns `fit(features) -> core.estimate.estimator.FitResult` for the tasks' TaskFeatures
(in training order); `core.estimate.estimator.predict(tf, fit.w)` then scores each task. The affinity
step (whose estimates validate-estimate checks) and the what-if both call it, so they always
use the same estimator.
"""

from __future__ import annotations

from collections.abc import Callable

from core.estimate.estimator import FitResult
from core.estimate.methods import method_class

Fitter = Callable[[list], FitResult]


def fitter(cfg) -> Fitter:
    """The estimator of cfg.estimator.method (core.estimate.methods): by default the recipe's
    replay averaged over estimator.orders batch orders (the expected fine-tune)."""
    return method_class(cfg.estimator.method).fitter(cfg)


def settings(cfg) -> dict:
    """What an estimate depends on besides the features (part of the affinity fingerprint)."""
    return method_class(cfg.estimator.method).settings(cfg)
