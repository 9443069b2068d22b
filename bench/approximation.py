"""Benchmark: the first-order (Taylor) approximation of h against real forward passes.

On SmolLM2-135M with the quick config's adapter (LoRA r=4, alpha=32 on q,k,v of the top 8
layers) and real sample rows (yelp, snli, newsgroups), for each quantization setting:

1. At the expansion point (fresh seeded adapter, B = 0), for every val row: h0 and the
   UNPROJECTED gradient g = ∂h/∂B (k = D) for both targets ("choices" and "vocab"), plus the
   unprojected logit gradients G_c = ∂z_c/∂B and Glse = ∂lse/∂B.
2. Updates of several sizes:
   a. a short REAL fine-tune (core.training.train_adapter, the quick recipe) with its A and B
      scaled: A = A0 + s(A_ft − A0), B = s·B_ft;
   b. the estimator's own update: fit_update(max_norm) on the stored projected train features
      of each target → w, Δ_B = Π (s·w).
3. Real h from a no-grad forward pass with the update applied, against the linear predictions
   (see METRICS), and the relative weight change ‖scaling·B·A‖_F / ‖W‖_F of the adapted matrices.

Writes bench/results/approximation.json and prints a table.

    .venv/bin/python bench/approximation.py [--quantization 4bit none] [--rows 32]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GROUPTUNE_PROGRESS", "0")

import numpy as np  # noqa: E402

TASKS = ["yelp", "snli", "newsgroups"]
TARGETS = ("choices", "vocab")
FT_SCALES = (0.25, 0.5, 1.0, 2.0)
EST_SCALES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
FT_NAME = "finetune"
THRESHOLDS = (0.05, 0.10)

METRICS = {
    "change_rel_err": "‖h_real − h_pred‖ / ‖h_real − h0‖ over all val rows (the relative error "
    "of the predicted CHANGE of h; the stricter metric, the one FIELD_NOTES trap 3 measured)",
    "paper_rse_mean": "mean over rows of (h_real − h_pred)² / h_real² (the paper's 'relative "
    "squared error averaged over examples'; dominated by rows with h_real near 0)",
    "paper_rse_median": "median over rows of (h_real − h_pred)² / h_real²",
    "corr": "Pearson correlation of the predicted change h_pred − h0 with the real change "
    "h_real − h0 over rows",
    "real_change_rms": "root mean square of h_real − h0",
    "pred_change_rms": "root mean square of h_pred − h0",
    "per_task_change_rel_err": "change_rel_err over each task's val rows",
}
PREDICTIONS = {
    "lin_h": "h0 + g·Δ_B: first-order Taylor expansion of h itself, unprojected g (k = D)",
    "lin_logits": "h computed exactly from linearised logits z + G·Δ_B and lse + Glse·Δ_B "
    "(unprojected): the form the estimator uses on val rows (core.estimator module doc)",
    "lin_h_proj": "estimator updates only: h0 + (Πᵀg)·(s·w), projected features (equals lin_h "
    "up to float rounding, since <Πᵀg, w> = <g, Πw>)",
}


# --- configuration --------------------------------------------------------------------------


def make_config(args, quantization: str, target: str):
    """The quick config's model/adapter/training settings on the bench's tasks and row caps."""
    from core.config import parse_config

    return parse_config(
        {
            "name": f"bench-approx-{quantization}-{target}",
            "model": {
                "name": "smollm2-135m",
                "quantization": quantization,
                "device": "cpu",
                "threads": args.threads,
            },
            "adapter": {"r": 4, "alpha": 32, "dropout": 0.1, "top_layers": 8},
            "data": {
                "root": "tasks",
                "max_train": args.rows,
                "max_val": args.rows,
                "max_test": 8,
                "max_tokens": args.max_tokens,
            },
            "tasks": TASKS,
            "features": {"target": target, "projection": "countsketch", "k": 400},
            "training": {"epochs": args.epochs, "lr": 5e-4, "batch_size": 8},
        },
        base_dir=ROOT / "sample_data",
    )


def workspace(args, quantization: str, target: str):
    from core.workspace import Workspace

    return Workspace(Path(args.workspaces) / f"bench-approx-{quantization}-{target}").ensure()


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- expansion-point features ---------------------------------------------------------------


@dataclass
class Batch:
    """One left-padded val batch of one task and its features at the expansion point."""

    task: str
    rows: np.ndarray  # row indices in the task's val split (and its feature store)
    inputs: dict
    choice_ids: list[int]
    gold: np.ndarray
    h0: dict = field(default_factory=dict)  # target -> (b,)
    g: dict = field(default_factory=dict)  # target -> (b, D) float32
    z: np.ndarray | None = None  # (b, C)
    lse: np.ndarray | None = None  # (b,)
    G: np.ndarray | None = None  # (b, C, D)
    Glse: np.ndarray | None = None  # (b, D)


def val_batches(cfg, tok, batch_size: int) -> list[Batch]:
    """Every task's val rows in length-sorted batches."""
    from core.prompts import encode_split, pad_batch
    from core.tasks import load_tasks

    out = []
    for task in load_tasks(cfg):
        enc = encode_split(tok, task, "val", cfg.data.max_tokens)
        order = np.argsort(enc.lengths, kind="stable")
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            inputs = pad_batch([enc.input_ids[i] for i in idx], tok.pad_token_id)
            out.append(Batch(task.name, idx, inputs, enc.choice_ids, enc.gold[idx]))
    return out


def expansion_features(peft_model, batches: list[Batch]) -> None:
    """Fill h0 and unprojected g per target (split "train" on val rows) and z, lse, G, Glse
    (split "val", target "vocab") of every batch, at the expansion point."""
    from core.features import batch_features

    for b in batches:
        for target in TARGETS:
            f = batch_features(peft_model, b.inputs, b.choice_ids, b.gold, target, "train")
            b.h0[target], b.g[target] = f["h"].numpy().astype(np.float64), f["g"].numpy()
        f = batch_features(peft_model, b.inputs, b.choice_ids, b.gold, "vocab", "val")
        b.z, b.lse = f["z"].numpy().astype(np.float64), f["lse"].numpy().astype(np.float64)
        b.G, b.Glse = f["G"].numpy(), f["Glse"].numpy()
        assert np.allclose(f["h"].numpy(), b.h0["vocab"], atol=1e-4), "h(vocab) differs"


def h_from_logits(z, lse, gold, target: str) -> np.ndarray:
    """h from answer-word logits z (b, C) and lse (b,): numpy twin of features.target_quantities."""
    from scipy.special import logsumexp

    from core.features import EPS

    zg = z[np.arange(len(z)), gold]
    norm = logsumexp(z, axis=1) if target == "choices" else lse
    logp = np.clip(zg - norm, math.log(EPS), math.log1p(-EPS))
    return logp - np.log(-np.expm1(logp))


# --- adapter weights ------------------------------------------------------------------------


def lora_weights(peft_model) -> list[tuple]:
    """(A parameter, B parameter, LoRA layer) of every adapted module, lora_b_parameters order."""
    from core.adapters import lora_layers

    return [
        (layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer)
        for _, layer in lora_layers(peft_model)
    ]


def set_adapter(weights, As, Bs) -> None:
    import torch

    with torch.no_grad():
        for (a, b, _), A, B in zip(weights, As, Bs, strict=True):
            a.copy_(A)
            b.copy_(B)


def base_weight_norms(weights) -> list[float]:
    """‖W‖_F of each adapted base matrix (4-bit weights dequantised with bitsandbytes)."""
    norms = []
    for _, _, layer in weights:
        w = layer.get_base_layer().weight
        if getattr(w, "quant_state", None) is not None:
            import bitsandbytes.functional as bnbf

            w = bnbf.dequantize_4bit(w.data, w.quant_state)
        norms.append(float(w.detach().float().norm()))
    return norms


def weight_change(weights, As, Bs, w_norms) -> dict:
    """Relative weight change of the adapted matrices: ‖scaling·B·A‖_F / ‖W‖_F."""
    d = [
        float(layer.scaling["default"] * (B.double() @ A.double()).norm())
        for (_, _, layer), A, B in zip(weights, As, Bs, strict=True)
    ]
    ratios = [x / n for x, n in zip(d, w_norms, strict=True)]
    total = math.sqrt(sum(x * x for x in d)) / math.sqrt(sum(n * n for n in w_norms))
    return {"total": total, "mean_per_matrix": float(np.mean(ratios)), "max": max(ratios)}


# --- real and predicted h -------------------------------------------------------------------


def real_forward(peft_model, batches: list[Batch]) -> list[dict]:
    """Per batch: real h per target, z and lse, from a no-grad forward pass."""
    import torch

    from core.features import target_quantities

    out = []
    with torch.no_grad():
        for b in batches:
            logits = peft_model(**b.inputs, logits_to_keep=1).logits[:, -1]
            choice, gold = torch.as_tensor(b.choice_ids), torch.as_tensor(b.gold)
            q = {t: target_quantities(logits, choice, gold, t) for t in TARGETS}
            out.append(
                {
                    "h": {t: q[t]["h"].double().numpy() for t in TARGETS},
                    "z": q["vocab"]["z"].double().numpy(),
                }
            )
    return out


def predictions(batches: list[Batch], delta_B: np.ndarray, gw: dict | None) -> list[dict]:
    """Per batch and target: lin_h, lin_logits (and lin_h_proj when gw = {target: [(b,)]}
    holds the projected products (Πᵀg)·(s·w) per batch)."""
    out = []
    for i, b in enumerate(batches):
        dz = b.G.astype(np.float64) @ delta_B
        dlse = b.Glse.astype(np.float64) @ delta_B
        z_hat = b.z + dz
        preds = {"z_hat": z_hat}
        for t in TARGETS:
            preds[("lin_h", t)] = b.h0[t] + b.g[t].astype(np.float64) @ delta_B
            preds[("lin_logits", t)] = h_from_logits(z_hat, b.lse + dlse, b.gold, t)
            if gw is not None:
                preds[("lin_h_proj", t)] = b.h0[t] + gw[t][i]
        out.append(preds)
    return out


def error_metrics(h0, h_real, h_pred, tasks) -> dict:
    """The metrics of METRICS for one update, target and prediction kind."""
    d_real, d_pred, resid = h_real - h0, h_pred - h0, h_real - h_pred
    rse = resid**2 / np.maximum(h_real**2, 1e-12)
    per_task = {
        t: float(np.linalg.norm(resid[tasks == t]) / np.linalg.norm(d_real[tasks == t]))
        for t in dict.fromkeys(tasks)
    }
    return {
        "change_rel_err": float(np.linalg.norm(resid) / np.linalg.norm(d_real)),
        "paper_rse_mean": float(rse.mean()),
        "paper_rse_median": float(np.median(rse)),
        "corr": float(np.corrcoef(d_pred, d_real)[0, 1]),
        "real_change_rms": float(np.sqrt(np.mean(d_real**2))),
        "pred_change_rms": float(np.sqrt(np.mean(d_pred**2))),
        "per_task_change_rel_err": per_task,
    }


def evaluate_update(peft_model, batches, weights, As, Bs, delta_B, gw=None) -> dict:
    """Apply (As, Bs), forward for real, compare with every linear prediction."""
    set_adapter(weights, As, Bs)
    real = real_forward(peft_model, batches)
    preds = predictions(batches, delta_B, gw)
    tasks = np.concatenate([[b.task] * len(b.rows) for b in batches])
    gold = np.concatenate([b.gold for b in batches])
    result = {}
    kinds = ["lin_h", "lin_logits"] + (["lin_h_proj"] if gw is not None else [])
    for t in TARGETS:
        h0 = np.concatenate([b.h0[t] for b in batches])
        h_real = np.concatenate([r["h"][t] for r in real])
        result[t] = {
            k: error_metrics(h0, h_real, np.concatenate([p[(k, t)] for p in preds]), tasks)
            for k in kinds
        }
        result[t]["mean_h0"] = float(h0.mean())
        result[t]["mean_h_real"] = float(h_real.mean())
    z_real = np.concatenate([r["z"] for r in real])
    z_hat = np.concatenate([p["z_hat"] for p in preds])
    result["val_accuracy_real"] = float(np.mean(z_real.argmax(1) == gold))
    result["val_accuracy_lin_logits"] = float(np.mean(z_hat.argmax(1) == gold))
    return result


# --- the two kinds of update ----------------------------------------------------------------


def finetune_weights(args, quantization, peft_model, weights) -> tuple[list, list, dict]:
    """Train the real fine-tune (reused when already complete) and return its final-epoch
    (A_ft, B_ft). Leaves the fine-tuned weights in `peft_model`: the caller restores A0, B = 0."""
    from core.training import load_adapter_weights, train_adapter

    cfg, ws = make_config(args, quantization, "choices"), workspace(args, quantization, "choices")
    start = time.perf_counter()
    record = train_adapter(cfg, ws, FT_NAME, TASKS, progress=False)
    folder = ws.adapter_dir(FT_NAME)
    loaded = {}
    for which, path in (
        ("best", folder / "adapter_model.safetensors"),
        ("final", folder / "checkpoint" / "adapter.safetensors"),
    ):
        load_adapter_weights(peft_model, path)
        loaded[which] = (
            [a.detach().clone() for a, _, _ in weights],
            [b.detach().clone() for _, b, _ in weights],
        )
    info = {
        "tasks": TASKS,
        "train_rows": args.rows * len(TASKS),
        "epochs": cfg.training.epochs,
        "lr": cfg.training.lr,
        "batch_size": cfg.training.batch_size,
        "steps": record["accounting"].get("steps"),
        "best_epoch": record["best_epoch"],
        "history": record["history"],
        "seconds_this_run": round(time.perf_counter() - start, 1),
        "weights_used": "final epoch (checkpoint/adapter.safetensors)",
        "best_epoch_delta_B_norm": _norm(loaded["best"][1]),
    }
    return loaded["final"][0], loaded["final"][1], info


def _norm(tensors) -> float:
    """Frobenius norm of a list of tensors taken as one flat vector."""
    return math.sqrt(sum(float(t.double().norm()) ** 2 for t in tensors))


def estimator_update(args, quantization, target: str) -> tuple[np.ndarray, dict]:
    """Stored projected train features (core.pipeline.gradients) → fit_update → w."""
    from core.estimator import fit_update
    from core.pipeline import gradients
    from core.store import load_features

    cfg, ws = make_config(args, quantization, target), workspace(args, quantization, target)
    start = time.perf_counter()
    gradients(cfg, ws)
    seconds = time.perf_counter() - start
    features = [load_features(ws, t) for t in TASKS]
    fit = fit_update(features, max_norm=args.max_norm, names=TASKS)
    info = {
        "target": target,
        "max_norm": args.max_norm,
        "reg": fit.reg,
        "w_norm": fit.norm,
        "converged": fit.converged,
        "train_rows": fit.n_rows,
        "train_loss_linear": fit.train_loss,
        "gradients_seconds_this_run": round(seconds, 1),
    }
    return fit.w, info


# --- one setting ----------------------------------------------------------------------------


def run_setting(args, quantization: str) -> dict:
    """Everything for one quantization setting; returns its part of the report."""
    import torch

    from core.features import load_extraction_model

    t0 = time.perf_counter()
    say(f"[{quantization}] estimator updates: gradient stores + fit_update")
    est = {t: estimator_update(args, quantization, t) for t in TARGETS}
    say(f"[{quantization}] loading the expansion point")
    cfg = make_config(args, quantization, "choices")
    peft_model, tok, projector = load_extraction_model(cfg)
    weights = lora_weights(peft_model)
    A0 = [a.detach().clone() for a, _, _ in weights]
    B0 = [torch.zeros_like(b) for _, b, _ in weights]
    w_norms = base_weight_norms(weights)
    say(f"[{quantization}] real fine-tune ({args.epochs} epochs)")
    A_ft, B_ft, ft_info = finetune_weights(args, quantization, peft_model, weights)
    set_adapter(weights, A0, B0)
    prepare = __import__("core.features", fromlist=["prepare_for_extraction"])
    prepare.prepare_for_extraction(peft_model)

    say(f"[{quantization}] expansion-point features (unprojected, D = {projector.D})")
    batches = val_batches(cfg, tok, args.batch_size)
    expansion_features(peft_model, batches)
    check = real_forward(peft_model, batches)
    h0_check = max(
        float(np.max(np.abs(r["h"][t] - b.h0[t])))
        for r, b in zip(check, batches, strict=True)
        for t in TARGETS
    )
    rows = []

    ft_flat = torch.cat([b.reshape(-1) for b in B_ft]).double().numpy()
    for s in FT_SCALES:
        As = [a0 + s * (a - a0) for a0, a in zip(A0, A_ft, strict=True)]
        Bs = [s * b for b in B_ft]
        res = evaluate_update(peft_model, batches, weights, As, Bs, s * ft_flat)
        res |= {
            "update": "finetune",
            "scale": s,
            "delta_B_norm": s * float(np.linalg.norm(ft_flat)),
            "delta_A_norm": s * math.sqrt(sum(float((a - a0).norm()) ** 2 for a0, a in zip(A0, A_ft, strict=True))),
            "rel_weight_change": weight_change(weights, As, Bs, w_norms),
        }
        rows.append(res)
        say(f"[{quantization}] finetune x{s}: {_short(res)}")

    for target, (w, info) in est.items():
        lifted = projector.lift(torch.as_tensor(w, dtype=torch.float32)).double().numpy()
        info["lift_ratio"] = float(np.linalg.norm(lifted) / np.linalg.norm(w))
        gw_unit = {
            t: [projector.project(torch.as_tensor(b.g[t])).double().numpy() @ w for b in batches]
            for t in TARGETS
        }
        for s in EST_SCALES:
            delta = s * lifted
            Bs = [torch.as_tensor(p, dtype=torch.float32).view_as(b) for p, b in zip(np.split(delta, np.cumsum(projector.dims)[:-1]), B0, strict=True)]
            gw = {t: [s * x for x in gw_unit[t]] for t in TARGETS}
            res = evaluate_update(peft_model, batches, weights, A0, Bs, delta, gw)
            res |= {
                "update": f"estimator[{target}]",
                "scale": s,
                "w_norm": s * float(np.linalg.norm(w)),
                "delta_B_norm": float(np.linalg.norm(delta)),
                "delta_A_norm": 0.0,
                "rel_weight_change": weight_change(weights, A0, Bs, w_norms),
            }
            rows.append(res)
            say(f"[{quantization}] estimator[{target}] x{s}: {_short(res)}")
    set_adapter(weights, A0, B0)
    return {
        "quantization": quantization,
        "D": projector.D,
        "k": projector.k,
        "val_rows": int(sum(len(b.rows) for b in batches)),
        "check_max_abs_h0_nograd_vs_features": h0_check,
        "finetune": ft_info,
        "estimator": {t: info for t, (_, info) in est.items()},
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _short(res: dict) -> str:
    c, v = res["choices"]["lin_h"], res["vocab"]["lin_h"]
    return (
        f"|ΔB|={res['delta_B_norm']:.3g} chg_err choices={c['change_rel_err']:.3g} "
        f"vocab={v['change_rel_err']:.3g}"
    )
