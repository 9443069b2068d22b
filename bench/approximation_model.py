"""The model side of bench/approximation.py: real forwards with an update written into the adapter, the first-order prediction of the same h, their errors, and the fine-tunes and estimator updates they are measured at."""

from __future__ import annotations

import math
import time

import numpy as np  # noqa: E402
from approximation_setup import (
    EST_SCALES,
    FT_NAME,
    FT_SCALES,
    TARGETS,
    TASKS,
    Batch,
    make_config,
    say,
    short_name,
    workspace,
)


def expansion_features(peft_model, batches: list[Batch]) -> None:
    """Fill h0 and unprojected g per target (split "train" on val rows) and z, lse, G, Glse
    (split "val", target "vocab") of every batch, at the expansion point."""
    from core.gradients.per_example import batch_features

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

    from core.gradients.per_example import EPS

    zg = z[np.arange(len(z)), gold]
    norm = logsumexp(z, axis=1) if target == "choices" else lse
    logp = np.clip(zg - norm, math.log(EPS), math.log1p(-EPS))
    return logp - np.log(-np.expm1(logp))


def lora_weights(peft_model) -> list[tuple]:
    """(A parameter, B parameter, LoRA layer) of every adapted module, lora_b_parameters order."""
    from core.models.adapters import lora_layers

    return [
        (layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer)
        for _, layer in lora_layers(peft_model)
    ]


def set_adapter(weights, As, Bs) -> None:
    """Copy A and B matrices into the adapter (lists in lora_weights order)."""
    import torch

    with torch.no_grad():
        for (a, b, _), A, B in zip(weights, As, Bs, strict=True):
            a.copy_(A)
            b.copy_(B)


def base_weight_norms(weights) -> list[float]:
    """‖W‖_F of each adapted base matrix (quantised weights dequantised first)."""
    from core.validate.update_size import base_norm

    return [base_norm(layer) for _, _, layer in weights]


def weight_change(weights, As, Bs, w_norms) -> dict | None:
    """Relative weight change of the adapted matrices: ‖scaling·B·A‖_F / ‖W‖_F (None when the
    base weight norms could not be computed)."""
    if w_norms is None:
        return None
    d = [
        float(layer.scaling["default"] * (B.double() @ A.double()).norm())
        for (_, _, layer), A, B in zip(weights, As, Bs, strict=True)
    ]
    ratios = [x / n for x, n in zip(d, w_norms, strict=True)]
    total = math.sqrt(sum(x * x for x in d)) / math.sqrt(sum(n * n for n in w_norms))
    return {"total": total, "mean_per_matrix": float(np.mean(ratios)), "max": max(ratios)}


def real_forward(peft_model, batches: list[Batch], cached: bool = False) -> list[dict]:
    """Per batch: real h per target and z from a no-grad forward pass; `cached`: from the
    cached inputs of the first adapted layer (only inside `with LowerLayerCache(...)`)."""
    import torch

    from core.gradients.per_example import target_quantities

    out = []
    with torch.no_grad():
        for b in batches:
            inputs = b.cached if cached else b.inputs
            logits = peft_model(**inputs, logits_to_keep=1).logits[:, -1]
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
    """Apply (As, Bs), forward for real (cached lower layers: call it inside LowerLayerCache),
    and compare with every linear prediction."""
    set_adapter(weights, As, Bs)
    real = real_forward(peft_model, batches, cached=True)
    preds = predictions(batches, delta_B, gw)
    tasks = np.concatenate([[b.task] * len(b.rows) for b in batches])
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
    for name, z in (("real", [r["z"] for r in real]), ("lin_logits", [p["z_hat"] for p in preds])):
        hits = np.concatenate([zb.argmax(1) == b.gold for zb, b in zip(z, batches, strict=True)])
        result[f"val_accuracy_{name}"] = float(hits.mean())
    return result


def finetune_weights(args, quantization, peft_model, weights) -> tuple[list, list, dict]:
    """Train the real fine-tune (reused when already complete) and return its final-epoch
    (A_ft, B_ft). Leaves the fine-tuned weights in `peft_model`: the caller restores A0, B = 0."""
    from core.train.run import load_adapter_weights
    from core.train.trainer import train_adapter

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
        "best_epoch_delta_B_norm": update_norm(loaded["best"][1]),
    }
    return loaded["final"][0], loaded["final"][1], info


def update_norm(tensors) -> float:
    """Frobenius norm of a list of tensors taken as one flat vector."""
    return math.sqrt(sum(float(t.double().norm()) ** 2 for t in tensors))


def estimator_update(args, quantization, target: str) -> tuple[np.ndarray, dict]:
    """Stored projected train features (core.pipeline.gradients) → fit_update → w."""
    from core.estimate.estimator import fit_update
    from core.gradients.store import load_features
    from core.pipeline import gradients

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


def split_B(delta: np.ndarray, B0: list) -> list:
    """A flat (D,) update cut into B-shaped float32 tensors (lora_b_parameters order)."""
    import torch

    pieces = np.split(delta, np.cumsum([b.numel() for b in B0])[:-1])
    return [
        torch.as_tensor(p, dtype=torch.float32).view_as(b) for p, b in zip(pieces, B0, strict=True)
    ]


def finetune_rows(ctx, A_ft, B_ft) -> list[dict]:
    """The real fine-tune at every scale s: A = A0 + s(A_ft − A0), B = s·B_ft ("finetune"),
    and its B part alone, A = A0 ("finetune[B only]": no second-order A·B term)."""
    flat = np.concatenate([b.double().numpy().reshape(-1) for b in B_ft])
    rows = []
    for update, move_A in (("finetune", True), ("finetune[B only]", False)):
        for s in FT_SCALES:
            As = [a0 + s * (a - a0) if move_A else a0 for a0, a in zip(ctx.A0, A_ft, strict=True)]
            Bs = [s * b for b in B_ft]
            res = evaluate_update(ctx.model, ctx.batches, ctx.weights, As, Bs, s * flat)
            res = {
                "update": update,
                "scale": s,
                "delta_B_norm": s * float(np.linalg.norm(flat)),
                "delta_A_norm": update_norm([a - a0 for a0, a in zip(ctx.A0, As, strict=True)]),
                "rel_weight_change": weight_change(ctx.weights, As, Bs, ctx.w_norms),
                **res,
            }
            rows.append(res)
            say(f"[{ctx.quantization}] {update} x{s}: {short_name(res)}")
    return rows


def estimator_rows(ctx, target: str, w: np.ndarray, info: dict) -> list[dict]:
    """The estimator's update w (fitted on `target`) at every scale s: Δ_B = Π(s·w)."""
    import torch

    lifted = ctx.projector.lift(torch.as_tensor(w, dtype=torch.float32)).double().numpy()
    info["lift_ratio"] = float(np.linalg.norm(lifted) / np.linalg.norm(w))
    # (Πᵀg)·w per batch and target, with g projected by the same countsketch as the store
    gw = {
        t: [
            ctx.projector.project(torch.as_tensor(b.g[t])).double().numpy() @ w for b in ctx.batches
        ]
        for t in TARGETS
    }
    rows = []
    for s in EST_SCALES:
        Bs = split_B(s * lifted, ctx.B0)
        scaled = {t: [s * x for x in v] for t, v in gw.items()}
        res = evaluate_update(ctx.model, ctx.batches, ctx.weights, ctx.A0, Bs, s * lifted, scaled)
        res = {
            "update": f"estimator[{target}]",
            "scale": s,
            "w_norm": s * float(np.linalg.norm(w)),
            "delta_B_norm": s * float(np.linalg.norm(lifted)),
            "delta_A_norm": 0.0,
            "rel_weight_change": weight_change(ctx.weights, ctx.A0, Bs, ctx.w_norms),
            **res,
        }
        rows.append(res)
        say(f"[{ctx.quantization}] estimator[{target}] x{s}: {short_name(res)}")
    return rows
