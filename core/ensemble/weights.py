"""Per-task ensemble weights on the simplex, fitted on val to minimise the NLL of the mixed logits, starting from own routing and never ending worse than it on val; weights under PRUNE_BELOW are dropped."""

from __future__ import annotations

import math

import numpy as np

from core.accounting import Accounting, Meter, stage_entry
from core.data.prompts import encode_split
from core.ensemble.logits import cached_logits, scoring_flops
from core.ensemble.manifest import own_weights, save_manifest
from core.models.scoring import model_device

PRUNE_BELOW = 1e-3  # fitted weights this small are dropped: each costs a forward at inference


def mixed_logits(logits: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Σ_k w_k · logits_k over the adapters with nonzero weight; each (n, C) -> (n, C)."""
    return sum(w * logits[a].astype(np.float64) for a, w in weights.items() if w > 0)


def _nll_and_grad(alpha: np.ndarray, stack: np.ndarray, gold: np.ndarray):
    """Mean NLL of softmax(Σ_k α_k L_k) at gold, and its gradient in α. stack: (K, n, C)."""
    z = np.tensordot(alpha, stack, axes=1)  # (n, C)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    rows = np.arange(len(gold))
    nll = float(np.mean(log_norm - z[rows, gold]))
    resid = np.exp(z - log_norm[:, None])
    resid[rows, gold] -= 1.0  # p - onehot(gold)
    return nll, np.einsum("knc,nc->k", stack, resid) / len(gold)


def fit_weights(
    logits: dict[str, np.ndarray], gold: np.ndarray, start: dict[str, float]
) -> tuple[dict[str, float], dict]:
    """Simplex weights over adapters minimising val NLL of the mixed logits (SLSQP).

    logits: adapter -> (n, C) val choice logits; gold: (n,); start: the "own" weights. Starts
    from `start` and returns it unchanged when the fit does not lower the NLL, so the fitted
    val NLL is never above own. Weights under 1e-3 are pruned (each costs a forward).
    """
    from scipy.optimize import minimize

    names = list(logits)
    stack = np.stack([logits[a] for a in names]).astype(np.float64)
    a0 = np.array([start.get(a, 0.0) for a in names], dtype=float)
    nll0 = _nll_and_grad(a0, stack, gold)[0]
    res = minimize(
        _nll_and_grad,
        a0,
        args=(stack, gold),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * len(names),
        constraints=[
            {"type": "eq", "fun": lambda a: a.sum() - 1.0, "jac": lambda a: np.ones_like(a)}
        ],
    )
    alpha = np.clip(res.x, 0.0, None)
    alpha[alpha < PRUNE_BELOW] = 0.0
    alpha = alpha / alpha.sum() if alpha.sum() > 0 else a0
    nll = _nll_and_grad(alpha, stack, gold)[0]
    if not math.isfinite(nll) or nll > nll0:
        alpha, nll = a0, nll0
    weights = {a: float(w) for a, w in zip(names, alpha, strict=True) if w > 0}
    return weights, {"val_nll_own": nll0, "val_nll_fit": nll, "converged": bool(res.success)}


def fit_all_weights(ws, model, tokenizer, tasks, manifest: dict, cfg) -> tuple[dict, dict]:
    """Per task, `fit_weights` on cached val logits of every adapter. Returns (weights, info);
    the val passes it ran are counted in accounting.json's "ensemble_weights" stage."""
    own = own_weights(manifest["groups"])
    weights, info, tally = {}, {}, []
    meter = Meter(model_device(model)).start()
    for task in tasks:
        enc = encode_split(tokenizer, task, "val", cfg.data.max_tokens)
        logits = {
            a: cached_logits(ws, model, tokenizer, enc, a, cfg, tally) for a in manifest["adapters"]
        }
        weights[task.name], info[task.name] = fit_weights(logits, enc.gold, own[task.name])
    flops = scoring_flops(model, tokenizer, enc, sum(tally))
    entry = stage_entry(
        flops, meter.elapsed(), meter.peak_memory()["peak_memory_bytes"], 0, "val passes"
    )
    Accounting(ws).record("ensemble_weights", entry)
    return weights, info


def ensure_weights(cfg, ws, model, tokenizer, tasks, manifest: dict) -> dict:
    """The manifest with ensemble.weights' kind of weights, fitted (on cached val logits) and
    saved if it holds the other kind. Boosting rounds made on other weights are dropped."""
    kind = cfg.ensemble.weights
    if manifest["weights_kind"] == kind:
        return manifest
    new = {k: v for k, v in manifest.items() if k not in ("fit", "boosting")}
    if kind == "fit":
        new["weights"], new["fit"] = fit_all_weights(ws, model, tokenizer, tasks, manifest, cfg)
    else:
        new["weights"] = own_weights(manifest["groups"])
    new["weights_kind"] = kind
    save_manifest(ws, new)
    return new


def compose(logits_of, task: str, weights: dict, rounds: list[dict]) -> np.ndarray:
    """The ensemble's (n, C) choice logits for `task`: Σ_k α_k L_k + Σ_r η_r (L_r − L_0), the
    weighted group adapters plus each boosting round that covers the task, added as its change
    to the base model's logits L_0. logits_of(adapter name, or None for the base) -> (n, C)."""
    z = mixed_logits({a: logits_of(a) for a in weights[task]}, weights[task])
    for b in rounds:
        if task in b["tasks"] and b["step"] > 0:
            z = z + b["step"] * (logits_of(b["name"]).astype(np.float64) - logits_of(None))
    return z
