"""core.estimate.estimator on synthetic features with known answers (optimality, trust region, metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, minimize
from scipy.special import expit

from core.errors import DataError, GroupTuneError
from core.estimate.estimator import (
    NORM_RTOL,
    fit_update,
    predict,
    train_arrays,
)
from core.estimate.real import apply_update, evaluate_real
from core.gradients.store import TaskFeatures


def make_task(
    rng, n=60, m=20, C=2, k=8, direction=None, target="choices", h=None, g=None, name="t"
):
    """Real arrays of the feature contract; the gold logit's gradient leans along `direction`."""
    d = rng.normal(size=k) if direction is None else np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    g = rng.normal(size=(n, k)) * 0.5 + d if g is None else np.asarray(g, float)
    h = rng.normal(-0.5, 0.5, size=len(g)) if h is None else np.asarray(h, float)
    z = rng.normal(size=(m, C))
    gold = rng.integers(0, C, m)
    G = rng.normal(size=(m, C, k)) * 0.3
    G[np.arange(m), gold] += d
    lse = np.logaddexp.reduce(z, axis=1) + 1.0
    return TaskFeatures(
        train_h=h,
        train_g=g,
        train_gold=np.zeros(len(g), int),
        val_z=z,
        val_lse=lse,
        val_h=z[np.arange(m), gold],
        val_G=G,
        val_Glse=rng.normal(size=(m, k)) * 0.1 if target == "vocab" else None,
        val_gold=gold,
        target=target,
        k=k,
        meta={"task": name},
    )


def objective(w, tfs, reg):
    X, h, a = train_arrays(tfs)
    return a @ np.logaddexp(0, -(h + X @ w)) + reg * w @ w


def gradient(w, tfs, reg):
    X, h, a = train_arrays(tfs)
    return -(X.T @ (a * expit(-(h + X @ w)))) + 2 * reg * w


# ---------------------------------------------------------------- optimality


def test_one_dimensional_closed_form():
    # identical rows h = a, g = b: stationarity 2λs = b·σ(−(a + b s)), a 1-d root
    a, b, reg = -1.0, 2.0, 0.3
    tf = make_task(np.random.default_rng(0), k=1, h=np.full(5, a), g=np.full((5, 1), b))
    fit = fit_update([tf], reg=reg)
    s = brentq(lambda s: 2 * reg * s - b * expit(-(a + b * s)), -10, 10, xtol=1e-14)
    assert fit.w[0] == pytest.approx(s, abs=1e-7)
    grid = np.linspace(-3, 3, 600001)
    brute = grid[np.argmin(np.logaddexp(0, -(a + b * grid)) + reg * grid**2)]
    assert fit.w[0] == pytest.approx(brute, abs=2e-5)
    assert fit.converged and fit.reg == reg and fit.n_rows == 5


def test_symmetric_rows_give_zero_update():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(10, 6))
    tf = make_task(rng, k=6, g=np.vstack([g, -g]), h=np.tile(rng.normal(size=10), 2))
    fit = fit_update([tf], reg=0.05)
    assert np.linalg.norm(fit.w) < 1e-6


def test_optimality_against_an_independent_solver():
    rng = np.random.default_rng(2)
    tfs = [make_task(rng, n=40, k=12), make_task(rng, n=25, k=12)]
    reg = 0.02
    fit = fit_update(tfs, reg=reg)
    assert np.linalg.norm(gradient(fit.w, tfs, reg)) < 1e-7  # KKT: stationary point

    def hess(w, *_):
        X, h, a = train_arrays(tfs)
        s = expit(-(h + X @ w))
        return X.T @ (X * (a * s * (1 - s))[:, None]) + 2 * reg * np.eye(len(w))

    ref = minimize(
        objective,
        np.ones(12),
        args=(tfs, reg),
        jac=gradient,
        hess=hess,
        method="trust-exact",
        options={"gtol": 1e-11},
    )
    np.testing.assert_allclose(fit.w, ref.x, atol=1e-6)
    assert fit.train_loss == pytest.approx(objective(fit.w, tfs, 0.0), rel=1e-9)


def test_balance_equals_upsampling_the_small_task():
    rng = np.random.default_rng(3)
    small, big = make_task(rng, n=10, k=5), make_task(rng, n=100, k=5)
    upsampled = make_task(rng, k=5, g=np.tile(small.train_g, (10, 1)), h=np.tile(small.train_h, 10))
    balanced = fit_update([small, big], reg=0.01, balance=True)
    reference = fit_update([upsampled, big], reg=0.01)
    np.testing.assert_allclose(balanced.w, reference.w, atol=1e-7)
    plain = fit_update([small, big], reg=0.01)
    assert np.linalg.norm(plain.w - balanced.w) > 1e-3


# ---------------------------------------------------------------- trust region


def test_norm_rule_hits_max_norm_with_the_smallest_reg():
    rng = np.random.default_rng(4)
    tfs = [make_task(rng, n=80, k=20, direction=np.ones(20))]
    fit = fit_update(tfs, reg=None, max_norm=0.5)
    assert 0.5 * (1 - NORM_RTOL) <= fit.norm <= 0.5
    assert fit.converged
    # any clearly smaller λ breaks the cap: λ is the smallest feasible one
    assert fit_update(tfs, reg=fit.reg * 0.98).norm > 0.5
    assert np.linalg.norm(gradient(fit.w, tfs, fit.reg)) < 1e-6


def test_norm_rule_is_monotone_in_max_norm():
    rng = np.random.default_rng(5)
    tfs = [make_task(rng, n=80, k=20), make_task(rng, n=50, k=20)]
    fits = [fit_update(tfs, reg=None, max_norm=r) for r in (0.05, 0.2, 1.0, 3.0)]
    regs, norms = [f.reg for f in fits], [f.norm for f in fits]
    losses = [f.train_loss for f in fits]
    assert regs == sorted(regs, reverse=True)
    assert norms == sorted(norms) and losses == sorted(losses, reverse=True)
    for f, r in zip(fits, (0.05, 0.2, 1.0, 3.0), strict=True):
        assert r * (1 - NORM_RTOL) <= f.norm <= r


def test_given_reg_is_kept_when_feasible_and_raised_when_not():
    rng = np.random.default_rng(6)
    tfs = [make_task(rng, n=60, k=10)]
    free = fit_update(tfs, reg=0.01)
    kept = fit_update(tfs, reg=0.01, max_norm=free.norm * 2)
    assert kept.reg == 0.01 and kept.norm == pytest.approx(free.norm)
    capped = fit_update(tfs, reg=0.01, max_norm=free.norm / 4)
    assert capped.reg > 0.01 and capped.norm <= free.norm / 4


def test_larger_reg_gives_smaller_norm():
    rng = np.random.default_rng(7)
    tfs = [make_task(rng, n=60, k=10)]
    norms = [fit_update(tfs, reg=r).norm for r in (1e-3, 1e-2, 1e-1, 1.0)]
    assert norms == sorted(norms, reverse=True)


def test_cap_beyond_reach_uses_the_tiny_floor():
    # h already large and rows symmetric: the unregularised optimum is finite and small
    rng = np.random.default_rng(8)
    g = rng.normal(size=(10, 4))
    tf = make_task(rng, k=4, g=np.vstack([g, -g]), h=np.full(20, 3.0))
    fit = fit_update([tf], reg=None, max_norm=10.0)
    assert fit.norm < 10.0 and fit.reg <= 1e-6


# ---------------------------------------------------------------- linearised metrics


def _hand_task(target):
    # 3 val rows, 3 choices, k = 2
    z = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.0]])
    G = np.zeros((3, 3, 2))
    G[:, 0, 0] = 1.0  # w[0] raises choice 0 everywhere
    G[:, 2, 1] = 2.0  # w[1] raises choice 2 twice as fast
    return TaskFeatures(
        train_h=np.zeros(4),
        train_g=np.ones((4, 2)),
        train_gold=np.zeros(4, int),
        val_z=z,
        val_lse=np.array([3.0, 3.0, 3.0]),
        val_h=np.zeros(3),
        val_G=G,
        val_Glse=np.full((3, 2), 0.5) if target == "vocab" else None,
        val_gold=np.array([0, 2, 1]),
        target=target,
        k=2,
        meta={},
    )


def test_accuracy_and_loss_by_hand_choices():
    tf = _hand_task("choices")
    w = np.array([0.0, 1.5])
    # ẑ = [[1,0,3],[0,2,3],[.5,.5,3]]: argmax 2,2,2 vs gold 0,2,1 -> 1/3
    out = predict(tf, w)
    assert out["accuracy"] == pytest.approx(1 / 3)
    zh = np.array([[1, 0, 3], [0, 2, 3], [0.5, 0.5, 3]])
    logp = [zh[i, g] - np.log(np.exp(zh[i]).sum()) for i, g in enumerate([0, 2, 1])]
    assert out["loss"] == pytest.approx(-np.mean(logp))
    # base: argmax 0,1,(tie 0,1 -> first, 0) vs gold 0,2,1 -> 1/3
    assert out["base_accuracy"] == pytest.approx(1 / 3)
    assert predict(tf, np.array([0.0, 0.0]))["loss"] == pytest.approx(out["base_loss"])


def test_loss_by_hand_vocab_with_clamp():
    tf = _hand_task("vocab")
    w = np.array([1.0, 0.0])
    # ẑ_gold = [2, 0, 0.5]; lse_hat = 3 + 0.5 = 3.5 -> log p = [-1.5, -3.5, -3.0]
    out = predict(tf, w)
    assert out["loss"] == pytest.approx(np.mean([1.5, 3.5, 3.0]))
    assert out["accuracy"] == pytest.approx(1 / 3)  # argmax 0,1,0 vs 0,2,1
    huge = predict(tf, np.array([50.0, 0.0]))  # p̂ of row 0 would exceed 1: clamped
    assert np.isfinite(huge["loss"]) and huge["loss"] > 0


# ---------------------------------------------------------------- errors


def test_bad_features_are_named():
    rng = np.random.default_rng(10)
    tf = make_task(rng, k=4, name="rte")
    tf.train_g = tf.train_g.copy()
    tf.train_g[3, 1] = np.nan
    with pytest.raises(DataError, match=r"'rte'.*train_g.*row index 3"):
        fit_update([tf], reg=0.1)
    with pytest.raises(GroupTuneError, match="different projected dimensions"):
        fit_update([make_task(rng, k=4, name="a"), make_task(rng, k=5, name="b")], reg=0.1)
    with pytest.raises(DataError, match="'b'.*val_Glse"):
        bad = make_task(rng, k=4, name="b", target="vocab")
        bad.val_Glse = None
        fit_update([bad], reg=0.1)
    with pytest.raises(GroupTuneError, match="reg"):
        fit_update([make_task(rng, k=4)], reg=None, max_norm=None)
    with pytest.raises(GroupTuneError, match="shape"):
        predict(make_task(rng, k=4), np.zeros(3))


def test_apply_update_fills_b_in_order():
    b1, b2 = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.ones(4, 1))
    apply_update(None, np.arange(10, dtype=float), params=[("x", b1), ("y", b2)])
    assert torch.equal(b1.data, torch.arange(6.0).view(2, 3))
    assert torch.equal(b2.data, 1 + torch.arange(6.0, 10.0).view(4, 1))
    with pytest.raises(GroupTuneError, match="9 entries"):
        apply_update(None, np.zeros(9), params=[b1, b2])


# ---------------------------------------------------------------- the real model (tiny, CPU)


def test_evaluate_real_agrees_with_the_linear_model(tiny_task_root, tmp_path):
    from core.config import parse_config
    from core.gradients.extract import extract_features
    from core.gradients.store import load_features
    from core.workspace import Workspace

    cfg = parse_config(
        {
            "tasks": ["alpha", "beta"],
            "model": {"name": "tiny-llama", "quantization": "none", "device": "cpu"},
            "data": {"root": str(tiny_task_root)},
            "features": {"projection": "countsketch", "k": 32, "batch_size": 8},
        }
    )
    ws = Workspace(tmp_path / "ws").ensure()
    extract_features(cfg, ws)
    tfs = [load_features(ws, name) for name in cfg.task_names]
    zero = evaluate_real(cfg, ws, ["alpha"], np.zeros(32))["alpha"]
    assert zero["nll"] == pytest.approx(predict(tfs[0], np.zeros(32))["base_loss"], rel=1e-4)
    fit = fit_update(tfs, reg=None, max_norm=1.0)
    # A random tiny model is very curved: stay deep in the linear regime, where the error of
    # the predicted change must be small and shrink with the step (second order).
    errors = []
    for size in (0.01, 0.005):
        w = fit.w * (size / fit.norm)
        real = evaluate_real(cfg, ws, ["alpha", "beta"], w)
        for tf, name in zip(tfs, ("alpha", "beta"), strict=True):
            lin = predict(tf, w)
            change = real[name]["nll"] - lin["base_loss"]
            assert abs(change) > 1e-6  # the update reached the real model
            errors.append(abs(real[name]["nll"] - lin["loss"]) / abs(change))
    assert max(errors) < 0.1
    assert errors[2] < errors[0] and errors[3] < errors[1]
