"""The estimators by name, one contract: a class whose `name` is its spelling in
`estimator.method` (and in the pages' list), with a one-line `summary`, `fitter(cfg)` (a subset's
TaskFeatures, in training order -> core.estimate.estimator.FitResult) and `settings(cfg)` (what
its estimates depend on besides the features: part of the affinity fingerprint, so a change
re-runs the estimate). A new estimator is a class in its own file, its test, and one entry in
METHODS, as a grouping method is in core.grouping.methods."""

from __future__ import annotations

from core.errors import ConfigError
from core.estimate.estimator import Argmin
from core.estimate.replay import Replay

METHODS: dict[str, type] = {c.name: c for c in (Replay, Argmin)}


def method_class(name: str) -> type:
    if name not in METHODS:
        raise ConfigError(
            f"estimator.method {name!r} is not an estimator; use one of {', '.join(METHODS)}"
        )
    return METHODS[name]
