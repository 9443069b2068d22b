"""A control, not a method to train: the tasks dealt at random into m groups, blind to the
affinity. Trained beside the recommended grouping (bench/protocol.py), the gap between the two
is what the affinity itself adds."""

from __future__ import annotations

import numpy as np

from core.grouping.partition import (
    GroupingError,
    canonical_labels,
    check_m,
    clustering_objective,
    validate_affinity,
)


class RandomGrouping:
    """Tasks shuffled (seeded by `random_state`) into m groups of near-equal sizes, or of the
    given `sizes` (e.g. the recommended grouping's, so that only the membership differs).

    Learned: `labels_` (n,) canonical, `objective_` (`clustering_objective` of the partition).
    """

    name = "random"
    summary = "tasks dealt at random into m groups: a control that ignores the affinity"
    swept = False  # not a candidate the recommendation may pick

    def __init__(self, m: int, random_state=0, sizes: list[int] | None = None):
        self.m = m
        self.random_state = random_state
        self.sizes = sizes

    def fit(self, T, y=None) -> RandomGrouping:
        T = validate_affinity(T)
        n = T.shape[0]
        m = check_m(self.m, n)
        sizes = list(self.sizes or [n // m + (k < n % m) for k in range(m)])
        if len(sizes) != m or sum(sizes) != n or min(sizes) < 1:
            raise GroupingError(f"sizes {sizes} must be {m} positive counts summing to n = {n}")
        labels = np.empty(n, dtype=int)
        labels[np.random.default_rng(self.random_state).permutation(n)] = np.repeat(
            np.arange(m), sizes
        )
        self.labels_ = canonical_labels(labels)
        self.objective_ = clustering_objective(T, self.labels_)
        return self
