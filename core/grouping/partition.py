"""Partition n tasks into m groups from a task-affinity matrix T of shape (n, n).

Methods, from exact-ish to cheap:
- `SDPGrouping`: the SDP relaxation  max <T, X>  s.t.  X PSD, X >= 0, X·1 = 1, tr(X) = m
  (or, penalised, max <T, X> - penalty·tr(X) with m left free), solved with cvxpy
  (SCS, then Clarabel), then rounded to a partition. Falls back to spectral, and says why.
- `SpectralGrouping`: sklearn spectral clustering on exp(T).
- Trivial baselines: m = 1 (one adapter for all tasks) and m = n (one adapter per task).

`core.grouping.random_control.RandomGrouping` is the control (tasks dealt at random);
`core.grouping.methods` names them all. `core.grouping.choose.sweep` scores every m and method with the estimator's what-if
`predict(groups)`, and `recommend_m` picks the smallest m whose predicted accuracy is within the estimate's own
uncertainty (`prediction_uncertainty`) of the best.
Groups are lists of task names; labels are int arrays numbered 0..m-1 by first appearance.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.cluster import SpectralClustering

from core.errors import GroupTuneError

# Open-source conic solvers with PSD cones, tried in order. SCS (first-order) first: on planted
# n = 100 it took 0.24 s against Clarabel's (interior point) 23 s, for the same partitions and
# SDP value to 4 digits (bench/sdp_timing.py); Clarabel is the more accurate fallback.
SOLVERS = ("SCS", "CLARABEL")


SYMMETRY_RTOL = 1e-6


class GroupingError(GroupTuneError, ValueError):
    """Bad input to grouping: a malformed affinity matrix, m out of range, unknown task names."""


class SolverFallbackWarning(RuntimeWarning):
    """The SDP could not be solved, so spectral clustering was used instead."""


def validate_affinity(T, names: Sequence[str] | None = None) -> np.ndarray:
    """Check T is a finite, square, symmetric (n, n) matrix; return it as float, symmetrised.

    Asymmetry up to 1e-6 of max|T| (rounding noise) is averaged away; more is an error.
    `names`, if given, must be n distinct task names, and are used in error messages.
    """
    try:
        T = np.asarray(T, dtype=float)
    except (TypeError, ValueError) as exc:
        raise GroupingError(f"affinity matrix must be numeric: {exc}") from None
    if T.ndim != 2 or T.shape[0] != T.shape[1] or T.shape[0] == 0:
        raise GroupingError(f"affinity matrix must be square (n, n) with n >= 1, got {T.shape}")
    n = T.shape[0]
    if names is not None:
        check_names(names, n)
    bad = np.argwhere(~np.isfinite(T))
    if len(bad):
        i, j = (int(v) for v in bad[0])
        where = f" (task {names[i]}, task {names[j]})" if names is not None else ""
        raise GroupingError(f"affinity has NaN/inf at ({i}, {j}){where}")
    gap = float(np.max(np.abs(T - T.T)))
    if gap > SYMMETRY_RTOL * max(1.0, float(np.max(np.abs(T)))):
        raise GroupingError(f"affinity matrix is not symmetric (max |T-Tᵀ| = {gap:.3g})")
    return (T + T.T) / 2


def check_names(names: Sequence[str], n: int | None = None) -> list[str]:
    names = list(names)
    if n is not None and len(names) != n:
        raise GroupingError(f"got {len(names)} task names for an affinity matrix of size {n}")
    dupes = sorted({t for t in names if names.count(t) > 1})
    if dupes:
        raise GroupingError(f"task names must be unique; repeated: {dupes}")
    return names


def check_m(m, n: int) -> int:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise GroupingError(f"m (number of groups) must be an integer, got {m!r}")
    if not 1 <= m <= n:
        raise GroupingError(f"m (number of groups) must be between 1 and n = {n}, got {m}")
    return int(m)


def canonical_labels(labels) -> np.ndarray:
    """Renumber labels (n,) 0..m-1 by first appearance, so equal partitions compare equal."""
    labels = np.asarray(labels).ravel()
    first = {}
    for lab in labels.tolist():
        first.setdefault(lab, len(first))
    return np.array([first[lab] for lab in labels.tolist()], dtype=int)


def labels_to_groups(labels, names: Sequence[str]) -> list[list[str]]:
    """Labels (n,) -> groups of names, ordered by first task; tasks in `names` order."""
    names = check_names(names)
    labels = canonical_labels(labels)
    if len(labels) != len(names):
        raise GroupingError(f"got {len(labels)} labels for {len(names)} task names")
    groups: list[list[str]] = [[] for _ in range(labels.max() + 1 if len(labels) else 0)]
    for name, lab in zip(names, labels, strict=True):
        groups[lab].append(name)
    return groups


def groups_to_labels(groups: Sequence[Sequence[str]], names: Sequence[str]) -> np.ndarray:
    """Groups of names -> canonical labels (n,). Every name must appear in exactly one group."""
    names = check_names(names)
    index = {t: k for k, t in enumerate(names)}
    labels = np.full(len(names), -1, dtype=int)
    for g, group in enumerate(groups):
        for task in group:
            if task not in index:
                raise GroupingError(f"unknown task {task!r} in group {g}")
            if labels[index[task]] >= 0:
                raise GroupingError(f"task {task!r} is in more than one group")
            labels[index[task]] = g
    missing = [t for t, lab in zip(names, labels, strict=True) if lab < 0]
    if missing:
        raise GroupingError(f"tasks in no group: {missing}")
    return canonical_labels(labels)


def _one_hot(labels: np.ndarray) -> np.ndarray:
    """(n,) labels -> (n, m) membership matrix H."""
    return (labels[:, None] == np.arange(labels.max() + 1)[None, :]).astype(float)


def _partition_matrix(labels: np.ndarray) -> np.ndarray:
    """(n,) labels -> (n, n) X = Σ_k 1_k 1_kᵀ / |G_k|, the point of the SDP a partition is."""
    H = _one_hot(labels)
    return (H / H.sum(axis=0)) @ H.T


def clustering_objective(T, groups, names: Sequence[str] | None = None) -> float:
    """The SDP objective <T, X> at the partition matrix X = Σ_k 1_k 1_kᵀ / |G_k|.

    That is Σ_k (1/|G_k|) Σ_{i,j in G_k} T_ij: within-group affinity normalised by group size,
    so it does not grow just by making groups bigger. `groups` are lists of names (give `names`)
    or, without `names`, a labels array (n,).
    """
    T = validate_affinity(T, names)
    labels = groups_to_labels(groups, names) if names is not None else canonical_labels(groups)
    if len(labels) != T.shape[0]:
        raise GroupingError(f"got {len(labels)} labels for an affinity matrix of size {len(T)}")
    H = _one_hot(labels)
    return float(np.sum(np.diag(H.T @ T @ H) / H.sum(axis=0)))


def _round_sdp(X: np.ndarray, m: int | None) -> np.ndarray:
    """Round a relaxed X (n, n) to labels (n,) by greedy merging: average linkage on X.

    Start from singletons; repeatedly merge the two groups with the highest mean X_ij between
    them. m given: stop at m groups (ties in X can stop it early; `_repair_to_m` then fixes the
    count). m None: stop when no two groups have mean X_ij > 1/n, the paper's "same group" rule
    (a whisker below 1/n, so the all-in-one solution, all entries exactly 1/n, survives solver
    noise). On a partition matrix both give that partition. Why not "seed takes every task with
    X_ij > 1/n": on unstructured T, where X is far from a partition, it lost 20-50% of the
    objective in our checks, while average linkage came out ahead of spectral clustering.
    """
    n = X.shape[0]
    D = X.max() - (X + X.T) / 2  # similarity -> distance; mean distance = max - mean X
    np.fill_diagonal(D, 0.0)
    Z = linkage(squareform(D, checks=False), method="average")  # monotone: cuts are consistent
    if m is not None:
        return canonical_labels(fcluster(Z, m, criterion="maxclust"))
    return canonical_labels(fcluster(Z, X.max() - (1 - 1e-3) / n, criterion="distance"))


def _repair_to_m(T: np.ndarray, labels: np.ndarray, m: int) -> np.ndarray:
    """Make exactly m groups, each step the one that keeps `clustering_objective` highest.

    Too many groups: merge the pair whose merge scores best. Too few: move one task out of a
    group of >= 2 into a new singleton group (the task whose removal scores best).
    """
    labels = canonical_labels(labels)
    while labels.max() + 1 > m:
        H = _one_hot(labels)
        S, size = H.T @ T @ H, H.sum(axis=0)
        own = np.diag(S) / size
        merged = (np.diag(S)[:, None] + np.diag(S)[None, :] + 2 * S) / (size[:, None] + size)
        gain = merged - own[:, None] - own[None, :]
        np.fill_diagonal(gain, -np.inf)
        a, b = np.unravel_index(np.argmax(gain), gain.shape)
        labels = canonical_labels(np.where(labels == max(a, b), min(a, b), labels))
    while labels.max() + 1 < m:
        H = _one_hot(labels)
        S, size = H.T @ T @ H, H.sum(axis=0)
        g, s = labels, size[labels]
        to_group = (T * H[:, g].T).sum(axis=1)  # Σ_{j in G(i)} T_ij, per task i
        rest = (np.diag(S)[g] - 2 * to_group + np.diag(T)) / np.maximum(s - 1, 1)
        gain = rest + np.diag(T) - np.diag(S)[g] / s
        gain[s < 2] = -np.inf
        labels = labels.copy()
        labels[int(np.argmax(gain))] = labels.max() + 1
        labels = canonical_labels(labels)
    return labels


def _spectral_labels(T: np.ndarray, m: int, random_state) -> np.ndarray:
    n = T.shape[0]
    if m in (1, n):
        return canonical_labels(np.zeros(n) if m == 1 else np.arange(n))
    # exp(T - max T) is exp(T) up to a constant factor, which the normalised Laplacian ignores;
    # it keeps large affinities from overflowing.
    A = np.exp(T - T.max())
    sc = SpectralClustering(m, affinity="precomputed", random_state=random_state).fit(A)
    return _repair_to_m(T, sc.labels_, m)  # k-means can find < m clusters (e.g. identical rows)


class SpectralGrouping:
    """Spectral clustering on exp(T) into exactly m groups (sklearn, affinity="precomputed").

    Learned: `labels_` (n,) canonical, `objective_` (`clustering_objective` of the partition).
    """

    name = "spectral"
    summary = "spectral clustering of exp(affinity) (scikit-learn)"
    swept = True

    def __init__(self, m: int, random_state=0):
        self.m = m
        self.random_state = random_state

    def fit(self, T, y=None) -> SpectralGrouping:
        T = validate_affinity(T)
        m = check_m(self.m, T.shape[0])
        self.labels_ = _spectral_labels(T, m, self.random_state)
        self.objective_ = clustering_objective(T, self.labels_)
        return self


class SDPGrouping:
    """SDP relaxation of the normalised clustering objective, rounded to a partition.

    m given: max <T, X> s.t. X PSD, X >= 0, X·1 = 1, tr(X) = m; the rounding is repaired to
    exactly m groups (see `_round_sdp`, `_repair_to_m`). m None: max <T, X> - penalty·tr(X)
    without the trace constraint (penalty defaults to 0: meaningful when T is z-scored, with
    both signs; a larger penalty means fewer groups), and m is what the rounding gives.
    solver: a cvxpy solver name, or None to try SCS then Clarabel. If cvxpy is missing or every
    solver fails, spectral clustering is used (for m None: the m maximising objective -
    penalty·m), a `SolverFallbackWarning` is issued and `fallback_reason_` says why.

    Learned: `labels_` (n,), `objective_` (`clustering_objective` of the rounded partition),
    `X_` (n, n) relaxed solution or None, `sdp_value_` (relaxed optimum, an upper bound on the
    objective when m is fixed), `solver_`, `solver_status_`, `fallback_reason_` (None if the SDP
    was used).
    """

    name = "sdp"
    summary = "the paper's SDP relaxation of the clustering objective, rounded (cvxpy)"
    swept = True

    def __init__(self, m=None, penalty=None, solver=None, random_state=0, solver_options=None):
        self.m = m
        self.penalty = penalty
        self.solver = solver
        self.random_state = random_state
        self.solver_options = solver_options

    def fit(self, T, y=None) -> SDPGrouping:
        T = validate_affinity(T)
        n = T.shape[0]
        if self.m is not None and self.penalty is not None:
            raise GroupingError("give either m (fixed number of groups) or penalty, not both")
        m = None if self.m is None else check_m(self.m, n)
        penalty = 0.0 if self.penalty is None else float(self.penalty)
        if not np.isfinite(penalty):
            raise GroupingError(f"penalty must be finite, got {self.penalty!r}")
        self.X_, self.sdp_value_, self.solver_, self.solver_status_ = None, None, None, None
        self.fallback_reason_ = None
        if m in (1, n) or n == 1:  # the only feasible X is J/n or I: nothing to solve
            labels = np.zeros(n, dtype=int) if m == 1 or n == 1 else np.arange(n)
            self.X_ = _partition_matrix(labels)
            self.sdp_value_, self.solver_status_ = float(np.sum(T * self.X_)), "trivial"
        else:
            labels = self._solve(T, m, penalty)
        self.labels_ = canonical_labels(labels)
        self.objective_ = clustering_objective(T, self.labels_)
        return self

    def _solve(self, T: np.ndarray, m: int | None, penalty: float) -> np.ndarray:
        X, reason = self._solve_sdp(T, m, penalty)
        if X is not None:
            self.X_ = X
            labels = _round_sdp(X, m)
            return labels if m is None else _repair_to_m(T, labels, m)
        self.fallback_reason_ = f"SDP not used ({reason}); fell back to spectral clustering"
        warnings.warn(self.fallback_reason_, SolverFallbackWarning, stacklevel=3)
        if m is not None:
            return _spectral_labels(T, m, self.random_state)
        candidates = [_spectral_labels(T, k, self.random_state) for k in range(1, len(T) + 1)]
        scores = [clustering_objective(T, lab) - penalty * (lab.max() + 1) for lab in candidates]
        return candidates[int(np.argmax(scores))]

    def _solve_sdp(self, T, m, penalty) -> tuple[np.ndarray | None, str]:
        """Return (X, "") on success, or (None, why) when cvxpy is missing or no solver works."""
        try:
            import cvxpy as cp
        except ImportError:
            return None, "cvxpy is not installed"
        n = T.shape[0]
        X = cp.Variable((n, n), PSD=True)
        fit = cp.sum(cp.multiply(T, X))
        cons = [X >= 0, cp.sum(X, axis=1) == 1]
        if m is None:
            problem = cp.Problem(cp.Maximize(fit - penalty * cp.trace(X)), cons)
        else:
            problem = cp.Problem(cp.Maximize(fit), cons + [cp.trace(X) == m])
        errors = []
        for solver in [self.solver] if self.solver else SOLVERS:
            try:
                problem.solve(solver=solver, **(self.solver_options or {}))
            except (cp.error.SolverError, ValueError, TypeError, ArithmeticError) as exc:
                errors.append(f"{solver}: {exc}")
                continue
            if problem.status in ("optimal", "optimal_inaccurate") and X.value is not None:
                self.solver_, self.solver_status_ = solver, problem.status
                self.sdp_value_ = float(problem.value)
                return np.asarray(X.value), ""
            errors.append(f"{solver}: status {problem.status}")
        return None, "; ".join(errors)
