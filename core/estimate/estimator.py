"""Estimate fine-tuning on a set of tasks from gradient features, without training.

Training objective (all labels positive; the offset h enters with coefficient 1, not learned):

    ŵ_S = argmin_w  Σ_e  a_e · log(1 + exp(−(h(e) + g̃(e)ᵀw)))  +  λ ‖w‖²

over the train rows e of the tasks in S, with row weights a_e = 1/n_rows (the mean over the
union, as in the paper) or, with `balance=True`, a_e = 1/(|S|·n_task(e)) so that every task
counts equally whatever its size (a deterministic stand-in for the reference's upsampling).
Solved with scipy L-BFGS (analytic gradient) from w = 0, or warm-started at the previous λ.

Trust region (the linear model is only valid near the expansion point): with `max_norm` set,
λ is the smallest value whose update norm is at most max_norm, and never below `reg` when
`reg` is given: λ = max(reg, min{λ : ‖ŵ(λ)‖ ≤ max_norm}). ‖ŵ(λ)‖ decreases with λ and, for a
convex loss, ‖ŵ(λ)‖ ≤ ‖∇L(0)‖ / (2λ), so λ_hi = ‖∇L(0)‖ / (2·max_norm) is always feasible;
the search brackets the threshold below λ_hi (steps of 10, down to LAM_FLOOR when reg is
None) and refines it by regula falsi on log‖ŵ‖ vs log λ until max_norm·(1 − NORM_RTOL) ≤
‖ŵ‖ ≤ max_norm. The returned λ is always on the feasible side.

Linearised model on validation rows, at update w of shape (k,):
    ẑ_c = z_c + G_c·w                      (choice logits, (n, C))
    lse_hat = lse + Glse·w                 (full-vocabulary logsumexp, target "vocab" only)
    target "choices": log p̂_gold = ẑ_gold − logsumexp_c(ẑ_c)
    target "vocab":   log p̂_gold = ẑ_gold − lse_hat
    p̂ is clamped to [1e-6, 1 − 1e-6].
    loss     = mean −log p̂_gold   (cross-entropy of the gold answer: what training minimises)
    accuracy = mean(argmax_c ẑ_c == gold)   (never "p̂ > 0.5")
The base values are the same at w = 0.

Features follow the contract of `core.gradients.store.TaskFeatures` (duck-typed here): train_h (n,),
train_g (n, k), train_gold (n,), val_z (m, C), val_lse (m,), val_h (m,), val_G (m, C, k),
val_Glse (m, k) or None, val_gold (m,), target, k, meta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logsumexp

from core.errors import DataError, GroupTuneError

LAM_FLOOR = 1e-8  # "tiny λ": the search never goes below it when reg is None


NORM_RTOL = 1e-3  # calibrated norm lands in [max_norm·(1 − NORM_RTOL), max_norm]


P_CLAMP = 1e-6


MAX_SEARCH = 60


LBFGS = {"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-15, "maxcor": 20}  # tight: norms are compared


@dataclass
class FitResult:
    """A fitted update: w (k,), the λ used, ‖w‖, whether every solve converged, the row count,
    L-BFGS iterations (or replayed steps) summed over the λ search, the number of λ values
    tried, train objective, and the fit's FLOPs where counted."""

    w: np.ndarray
    reg: float
    norm: float
    converged: bool
    n_rows: int
    iterations: int = 0
    n_solves: int = 0
    train_loss: float = float("nan")
    flops: int = 0  # of the fit itself, counted analytically (0: not counted)
    members: tuple = ()  # an average of fits (the expected replay): each member's w; see score


def score(tf, fit: FitResult) -> dict[str, float]:
    """A fit's linearised val metrics of one task (`predict`): for an average of fits (the
    expected fine-tune over several batch orders, `fit.members`), the mean of its members'
    metrics, which estimates the mean over training seeds that real fine-tunes would give."""
    if not fit.members:
        return predict(tf, fit.w)
    each = [predict(tf, w) for w in fit.members]
    return {key: float(np.mean([e[key] for e in each])) for key in each[0]}


def task_name(tf, default: str = "?") -> str:
    """The task's name for messages: tf.name, meta["task"] or meta["key"]["task"]["name"]."""
    meta = getattr(tf, "meta", None) or {}
    name = getattr(tf, "name", None) or meta.get("task")
    if not name and isinstance(meta.get("key"), dict):  # core.gradients.store's meta: key.task.name
        name = (meta["key"].get("task") or {}).get("name")
    return str(name) if name else default


def _finite_rows(arr: np.ndarray, what: str, name: str) -> None:
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1) if arr.size else []
    if np.any(bad):
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"task {name!r}: {what} has NaN/inf (row index {row})", row=row + 1, field=what
        )


def _shape(arr, shape: tuple, what: str, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != len(shape) or any(
        s is not None and a != s for a, s in zip(arr.shape, shape, strict=True)
    ):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise DataError(f"task {name!r}: {what} has shape {arr.shape}, expected {want}")
    return arr


def check_features(tf, name: str | None = None) -> None:
    """Raise DataError naming the task, array and row if `tf` breaks the feature contract."""
    name = name or task_name(tf)
    k = int(tf.k)
    g = _shape(tf.train_g, (None, k), "train_g", name)
    n = len(g)
    if n == 0:
        raise DataError(f"task {name!r}: no train rows")
    z = _shape(tf.val_z, (None, None), "val_z", name)
    m, c = z.shape
    arrays = {"train_h": (tf.train_h, (n,)), "train_g": (g, (n, k)), "val_z": (z, (m, c))}
    arrays["val_G"] = (tf.val_G, (m, c, k))
    if getattr(tf, "train_G", None) is not None:  # per-choice train features (3+ answer words)
        arrays["train_z"] = (tf.train_z, (n, c))
        arrays["train_G"] = (tf.train_G, (n, c, k))
    if tf.target == "vocab":
        if tf.val_Glse is None or tf.val_lse is None:
            raise DataError(f"task {name!r}: target 'vocab' needs val_lse and val_Glse")
        arrays["val_lse"] = (tf.val_lse, (m,))
        arrays["val_Glse"] = (tf.val_Glse, (m, k))
    elif tf.target != "choices":
        raise DataError(f"task {name!r}: target must be 'choices' or 'vocab', got {tf.target!r}")
    for what, (arr, shape) in arrays.items():
        _finite_rows(_shape(arr, shape, what, name), what, name)
    gold = _shape(tf.val_gold, (m,), "val_gold", name)
    if m and (gold.min() < 0 or gold.max() >= c):
        raise DataError(f"task {name!r}: val_gold outside 0..{c - 1}", field="val_gold")


def check_same_k(features: list, names: list[str]) -> int:
    ks = {int(tf.k) for tf in features}
    if len(ks) > 1:
        detail = ", ".join(f"{n}: k={int(tf.k)}" for n, tf in zip(names, features, strict=True))
        raise GroupTuneError(
            f"tasks have different projected dimensions k ({detail}); "
            "extract their features with the same projection"
        )
    return ks.pop()


def train_arrays(features: list, balance: bool = False):
    """Stack train rows: X (N, k) float64, h (N,), row weights a (N,) summing to 1."""
    # one float64 copy straight from the (possibly memory-mapped float32) stores
    X = np.concatenate([np.asarray(tf.train_g) for tf in features], dtype=np.float64)
    h = np.concatenate([np.asarray(tf.train_h) for tf in features], dtype=np.float64)
    return X, h, row_weights([len(tf.train_h) for tf in features], balance)


def row_weights(sizes: list[int], balance: bool = False) -> np.ndarray:
    """(sum(sizes),) weights summing to 1: equal per row, or (balance) equal per task."""
    if balance:
        return np.concatenate([np.full(s, 1.0 / (len(sizes) * s)) for s in sizes])
    return np.full(sum(sizes), 1.0 / sum(sizes))


def _objective(w, X, h, a, lam):
    m = h + X @ w
    loss = a @ np.logaddexp(0.0, -m) + lam * (w @ w)
    grad = -(X.T @ (a * expit(-m))) + 2.0 * lam * w
    return loss, grad


def _solve(X, h, a, lam, w0):
    """L-BFGS at one λ; returns (w, iterations, success, objective)."""
    res = minimize(_objective, w0, (X, h, a, lam), "L-BFGS-B", jac=True, options=LBFGS)
    # "ABNORMAL" line-search exits at machine precision are still optima; check the gradient
    ok = bool(res.success) or float(np.max(np.abs(res.jac))) < 1e-7
    return res.x, int(res.nit), ok, float(res.fun)


class _Path:
    """Solutions along λ, warm-starting each solve from the solution at the nearest λ."""

    def __init__(self, X, h, a):
        self.X, self.h, self.a = X, h, a
        self.sols: dict[float, tuple] = {}
        self.iterations, self.ok = 0, True

    def norm(self, lam: float) -> float:
        if lam not in self.sols:
            near = min(self.sols, key=lambda v: abs(np.log(v / lam)), default=None)
            w0 = self.sols[near][0] if near is not None else np.zeros(self.X.shape[1])
            w, nit, ok, f = _solve(self.X, self.h, self.a, lam, w0)
            self.sols[lam] = (w, f)
            self.iterations += nit
            self.ok &= ok
        return float(np.linalg.norm(self.sols[lam][0]))


def _log_ratio(norm: float, max_norm: float) -> float:
    return float(np.log(max(norm, 1e-300) / max_norm))  # w = 0 exactly stays finite


def _threshold(path: _Path, lo: float, hi: float, max_norm: float) -> tuple[float, bool]:
    """Regula falsi (Illinois) on f(t) = log‖ŵ(e^t)‖ − log max_norm, f(lo) > 0 ≥ f(hi)."""
    t_lo, t_hi = np.log(lo), np.log(hi)
    f_lo = _log_ratio(path.norm(lo), max_norm)
    f_hi = _log_ratio(path.norm(hi), max_norm)
    side = 0
    for _ in range(MAX_SEARCH):
        if f_hi >= np.log1p(-NORM_RTOL) or t_hi - t_lo < 1e-12:
            return float(np.exp(t_hi)), True
        t = (t_lo * f_hi - t_hi * f_lo) / (f_hi - f_lo)
        t = min(max(t, t_lo + 1e-3 * (t_hi - t_lo)), t_hi - 1e-3 * (t_hi - t_lo))
        f = _log_ratio(path.norm(float(np.exp(t))), max_norm)
        if f > 0:
            t_lo, f_lo = t, f
            f_hi = f_hi / 2 if side == -1 else f_hi  # Illinois: stop one end from sticking
            side = -1
        else:
            t_hi, f_hi = t, f
            f_lo = f_lo / 2 if side == 1 else f_lo
            side = 1
    return float(np.exp(t_hi)), False


def _descend(path: _Path, hi: float, max_norm: float) -> tuple[float, bool]:
    """From a feasible λ, step down by secant steps on log‖ŵ‖ vs log λ until a step lands
    infeasible (then refine the bracket) or reaches LAM_FLOOR. Slope −1 (‖ŵ‖ ∝ 1/λ, the
    strong-regularisation regime) is the first guess; 10% overshoot makes a bracket likely."""
    t_hi, f_hi = np.log(hi), _log_ratio(path.norm(hi), max_norm)
    prev = None
    for _ in range(MAX_SEARCH):
        if f_hi >= np.log1p(-NORM_RTOL):
            return float(np.exp(t_hi)), True
        if t_hi <= np.log(LAM_FLOOR):
            return LAM_FLOOR, True
        slope = -1.0
        if prev is not None and (f_hi - prev[1]) / (t_hi - prev[0]) < -1e-3:
            slope = (f_hi - prev[1]) / (t_hi - prev[0])
        t = max(t_hi + 1.1 * f_hi / -slope, t_hi - np.log(1e3), np.log(LAM_FLOOR))
        f = _log_ratio(path.norm(float(np.exp(t))), max_norm)
        if f > 0:
            return _threshold(path, float(np.exp(t)), float(np.exp(t_hi)), max_norm)
        prev, (t_hi, f_hi) = (t_hi, f_hi), (t, f)
    return float(np.exp(t_hi)), False


def _calibrated_reg(path: _Path, reg: float | None, max_norm: float) -> tuple[float, bool]:
    """λ = max(reg, smallest λ with ‖ŵ(λ)‖ ≤ max_norm) (see the module docstring)."""
    g0 = np.linalg.norm(path.X.T @ (path.a * expit(-path.h)))
    if g0 == 0.0:
        return (reg if reg is not None else LAM_FLOOR), True  # w = 0 is optimal for every λ
    lam_hi = g0 / (2.0 * max_norm)  # feasible by the bound in the module docstring
    if reg is None:
        return _descend(path, max(lam_hi, LAM_FLOOR), max_norm)
    if path.norm(reg) <= max_norm:
        return reg, True
    return _threshold(path, reg, max(lam_hi, reg), max_norm)


_blas = None


def one_blas_thread():
    """L-BFGS makes many tiny BLAS calls; a second BLAS thread only adds synchronisation
    (measured 4 ms vs 136 ms per fit on a busy 2-core machine)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


def fit_arrays(X, h, a, reg: float | None, max_norm: float | None) -> FitResult:
    """fit_update on already stacked, validated float64 arrays (see `train_arrays`)."""
    with one_blas_thread():
        return _fit_arrays(X, h, a, reg, max_norm)


def _fit_arrays(X, h, a, reg, max_norm) -> FitResult:
    if reg is None and max_norm is None:
        raise GroupTuneError("set reg (λ), max_norm (trust region), or both")
    if reg is not None and not reg > 0:
        raise GroupTuneError(f"reg must be > 0, got {reg}")
    if max_norm is not None and not max_norm > 0:
        raise GroupTuneError(f"max_norm must be > 0, got {max_norm}")
    path = _Path(X, h, a)
    found = True
    lam = reg if max_norm is None else None
    if lam is None:
        lam, found = _calibrated_reg(path, reg, max_norm)
    norm = path.norm(lam)
    w, f = path.sols[lam]
    return FitResult(
        w=w,
        reg=float(lam),
        norm=norm,
        converged=path.ok and found,
        n_rows=len(h),
        iterations=path.iterations,
        n_solves=len(path.sols),
        train_loss=f - lam * norm**2,
    )


def fit_update(
    features: list,
    reg: float | None = None,
    max_norm: float | None = None,
    *,
    balance: bool = False,
    names: list[str] | None = None,
) -> FitResult:
    """Fit the update ŵ on the union of the tasks' train rows (objective in the module docstring).

    features: TaskFeatures of the tasks in S (same k); names: their names for error messages.
    reg: λ (None: chosen by the norm rule alone); max_norm: trust region (None: no cap).
    """
    if not features:
        raise GroupTuneError("fit_update needs the features of at least one task")
    names = names or [task_name(tf, f"#{i}") for i, tf in enumerate(features)]
    check_same_k(features, names)
    for tf, name in zip(features, names, strict=True):
        check_features(tf, name)
    return fit_arrays(*train_arrays(features, balance), reg, max_norm)


def _matvec(A, w) -> np.ndarray:
    """A @ w in A's own float dtype (no float64 copy of a large store), result as float64."""
    A = np.asarray(A)
    dtype = A.dtype if np.issubdtype(A.dtype, np.floating) else np.float64
    return (A @ w.astype(dtype, copy=False)).astype(np.float64)


def _log_p_gold(tf, w) -> tuple[np.ndarray, np.ndarray]:
    """(log p̂_gold (m,), ẑ (m, C)) of the linearised model at w (w = None: the base)."""
    z = np.asarray(tf.val_z, dtype=np.float64)
    if w is not None:
        z = z + _matvec(tf.val_G, w)
    gold = np.asarray(tf.val_gold, dtype=np.int64)
    zg = z[np.arange(len(z)), gold]
    if tf.target == "vocab":
        lse = np.asarray(tf.val_lse, dtype=np.float64)
        if w is not None:
            lse = lse + _matvec(tf.val_Glse, w)
        logp = zg - lse
    else:
        logp = zg - logsumexp(z, axis=1)
    return np.clip(logp, np.log(P_CLAMP), np.log1p(-P_CLAMP)), z


def _metrics(tf, w) -> tuple[float, float]:
    logp, z = _log_p_gold(tf, w)
    acc = np.mean(np.argmax(z, axis=1) == np.asarray(tf.val_gold)) if len(z) else float("nan")
    return float(-logp.mean()) if len(z) else float("nan"), float(acc)


def predict(tf, w) -> dict[str, float]:
    """Linearised val metrics of one task at update w (k,):
    {"loss", "accuracy", "base_loss", "base_accuracy"} (base: at w = 0)."""
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (int(tf.k),):
        raise GroupTuneError(
            f"task {task_name(tf)!r}: update has shape {w.shape}, expected ({tf.k},)"
        )
    loss, acc = _metrics(tf, w)
    base_loss, base_acc = _metrics(tf, None)
    return {"loss": loss, "accuracy": acc, "base_loss": base_loss, "base_accuracy": base_acc}


def argmin_fitter(reg: float | None, max_norm: float | None, balance: bool = False):
    """Subset features -> the regularised fit of their training rows (`balance`: each task
    weighted equally)."""
    return lambda features: fit_arrays(*train_arrays(features, balance), reg, max_norm)


class Argmin:
    """The paper's estimator: one regularised logistic fit per subset."""

    name = "argmin"
    summary = "the paper's regularised fit with a trust region (estimator.reg, estimator.max_norm)"

    @staticmethod
    def fitter(cfg):
        return argmin_fitter(cfg.estimator.reg, cfg.estimator.max_norm)

    @staticmethod
    def settings(cfg) -> dict:
        e = cfg.estimator
        return {"method": "argmin", "reg": e.reg, "max_norm": e.max_norm}
