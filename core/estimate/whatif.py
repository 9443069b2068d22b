"""What-if: the estimated effect of any partition of the tasks into groups, in milliseconds.

For a partition (a list of groups of task names) one update ŵ_G is fitted per group on the
union of its tasks' train rows (`core.estimate.fitter.fitter`, the same estimator as the affinity
step), and every member task is scored on its own val rows with the linearised
model. Fits are cached per distinct set of tasks, so moving one task to another group refits
only the two groups it left and joined.
"""

from __future__ import annotations

from core.errors import GroupTuneError
from core.estimate import fitter
from core.estimate.estimator import FitResult, argmin_fitter, check_features, check_same_k, score


class WhatIf:
    """Answer `predict(groups)` for a fixed set of tasks' features.

    features_by_task: {name: TaskFeatures}; `fit`: a core.estimate.fitter fitter (default: the
    paper's argmin with reg / max_norm / balance as in `core.estimate.estimator.fit_update`). Learned state: fits_ ({frozenset of names: FitResult}) and
    n_fits_ (how many fits were actually run, i.e. cache misses).
    """

    def __init__(
        self,
        features_by_task: dict,
        reg: float | None = None,
        max_norm: float | None = 1.0,
        balance: bool = False,
        fit: fitter.Fitter | None = None,
    ):
        if not features_by_task:
            raise GroupTuneError("what-if needs the features of at least one task")
        self.names = list(features_by_task)
        check_same_k(list(features_by_task.values()), self.names)
        for name, tf in features_by_task.items():
            check_features(tf, name)
        self.features = dict(features_by_task)
        self.fit = fit or argmin_fitter(reg, max_norm, balance)
        self.fits_: dict[frozenset, FitResult] = {}
        self.n_fits_ = 0
        self._scores: dict[tuple[str, frozenset], dict] = {}

    @classmethod
    def from_workspace(cls, cfg, ws, loader=None) -> WhatIf:
        """Load the config's tasks' features from the workspace (core.gradients.store.load_features)."""
        if loader is None:
            from core.gradients.store import load_features as loader
        features = {name: loader(ws, name) for name in cfg.task_names}
        return cls(features, fit=fitter.fitter(cfg))

    def check_groups(self, groups) -> list[list[str]]:
        """Groups as lists of names; raise unless they partition the tasks exactly."""
        groups = [list(g) for g in groups]
        if not groups:
            raise GroupTuneError("a partition needs at least one group")
        seen: dict[str, int] = {}
        for i, group in enumerate(groups):
            if not group:
                raise GroupTuneError(f"group {i} is empty")
            for name in group:
                if name not in self.features:
                    raise GroupTuneError(
                        f"group {i} names unknown task {name!r}; known: {self.names}"
                    )
                if name in seen:
                    raise GroupTuneError(f"task {name!r} is in group {seen[name]} and group {i}")
                seen[name] = i
        missing = [n for n in self.names if n not in seen]
        if missing:
            raise GroupTuneError(f"tasks in no group: {missing}; every task must be in one")
        return groups

    def fit_group(self, group) -> FitResult:
        """The update fitted on a group's union (cached per set of names)."""
        key = frozenset(group)
        if key not in self.fits_:
            members = [self.features[n] for n in self.names if n in key]  # training order
            self.fits_[key] = self.fit(members)
            self.n_fits_ += 1
        return self.fits_[key]

    def predict(self, groups) -> dict[str, dict]:
        """{task: {"loss", "accuracy", "base_loss", "base_accuracy", "group", "reg", "norm"}}
        for a partition (list of lists of task names covering every task exactly once)."""
        out = {}
        for i, group in enumerate(self.check_groups(groups)):
            fit, key = self.fit_group(group), frozenset(group)
            for name in group:
                if (name, key) not in self._scores:
                    self._scores[name, key] = score(self.features[name], fit)
                out[name] = {
                    **self._scores[name, key],
                    "group": i,
                    "reg": fit.reg,
                    "norm": fit.norm,
                }
        return out


def predict_partition(cfg, ws, groups, loader=None) -> dict[str, dict]:
    """Functional twin of WhatIf.from_workspace(cfg, ws).predict(groups)."""
    return WhatIf.from_workspace(cfg, ws, loader).predict(groups)
