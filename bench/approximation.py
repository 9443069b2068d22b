"""Benchmark: the first-order (Taylor) approximation of h against real forward passes.

On SmolLM2-135M with the quick config's adapter (LoRA r=4, alpha=32 on q,k,v of the top 8
layers) and real sample rows (yelp, snli, newsgroups), for each quantization setting:

1. At the expansion point (fresh seeded adapter, B = 0), for every val row: h0 and the
   UNPROJECTED gradient g = ∂h/∂B (k = D) for both targets ("choices" and "vocab"), plus the
   unprojected logit gradients G_c = ∂z_c/∂B and Glse = ∂lse/∂B.
2. Updates of several sizes:
   a. a short REAL fine-tune (core.training.train_adapter, the quick recipe) with its A and B
      scaled: A = A0 + s(A_ft − A0), B = s·B_ft ("finetune"); and its B part alone, A = A0
      ("finetune[B only]"), which separates the second-order A·B term from curvature in B;
   b. the estimator's own update: fit_update(max_norm) on the stored projected train features
      of each target → w, Δ_B = Π (s·w).
3. Real h from a no-grad forward pass with the update applied, against the linear predictions
   (see METRICS), and the relative weight change ‖scaling·B·A‖_F / ‖W‖_F of the adapted matrices.
   The real forwards start at the first adapted layer from cached hidden states (the layers
   below carry no adapter); checked equal to the full forward at the expansion point.

Workspaces (gitignored): workspaces/bench-approx-<quantization>-<target>; a rerun reuses their
fine-tune and feature stores.

Writes bench/results/approximation.json and prints a table.

    .venv/bin/python bench/approximation.py [--quantization 4bit none] [--rows 32]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from machine import machine_info  # noqa: E402 (bench/ is on the path of a bench script)

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
    """The bench's workspace of one setting and target (the fine-tune lives in "choices")."""
    from core.workspace import Workspace

    return Workspace(Path(args.workspaces) / f"bench-approx-{quantization}-{target}").ensure()


def say(msg: str) -> None:
    """Progress line with a timestamp."""
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
    cached: dict | None = None  # inputs of the first adapted layer (see LowerLayerCache)


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
    """Copy A and B matrices into the adapter (lists in lora_weights order)."""
    import torch

    with torch.no_grad():
        for (a, b, _), A, B in zip(weights, As, Bs, strict=True):
            a.copy_(A)
            b.copy_(B)


def base_weight_norms(weights) -> list[float]:
    """‖W‖_F of each adapted base matrix (quantised weights dequantised first)."""
    from core.validation import base_norm

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


class _Captured(Exception):
    pass


class LowerLayerCache:
    """Real forward passes that start at the first adapted layer.

    The layers below it carry no adapter, so their output does not depend on the update: it is
    computed once per batch (a forward stopped at the first adapted layer) and fed back as
    `inputs_embeds` while the lower layers are swapped for pass-throughs. Checked against the
    full forward at the expansion point (check_max_abs_h0_cached_forward_vs_features).
    """

    def __init__(self, peft_model, first_adapted: int):
        self.model = peft_model
        self.layers = peft_model.get_base_model().model.layers
        self.first = first_adapted

    def fill(self, batches: list[Batch]) -> None:
        import torch

        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            raise _Captured(hidden.detach().clone())

        handle = self.layers[self.first].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                for b in batches:
                    try:
                        self.model(**b.inputs, logits_to_keep=1)
                    except _Captured as got:
                        b.cached = {
                            "inputs_embeds": got.args[0],
                            "attention_mask": b.inputs["attention_mask"],
                            "position_ids": b.inputs["position_ids"],
                        }
        finally:
            handle.remove()

    def __enter__(self):
        from core.prefix import PassThrough

        self.saved = [self.layers[i] for i in range(self.first)]
        for i in range(self.first):
            self.layers[i] = PassThrough()  # core.prefix's, as the product skips them
        return self

    def __exit__(self, *exc):
        for i, layer in enumerate(self.saved):
            self.layers[i] = layer


# --- real and predicted h -------------------------------------------------------------------


def real_forward(peft_model, batches: list[Batch], cached: bool = False) -> list[dict]:
    """Per batch: real h per target and z from a no-grad forward pass; `cached`: from the
    cached inputs of the first adapted layer (only inside `with LowerLayerCache(...)`)."""
    import torch

    from core.features import target_quantities

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
                "delta_A_norm": _norm([a - a0 for a0, a in zip(ctx.A0, As, strict=True)]),
                "rel_weight_change": weight_change(ctx.weights, As, Bs, ctx.w_norms),
                **res,
            }
            rows.append(res)
            say(f"[{ctx.quantization}] {update} x{s}: {_short(res)}")
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
        say(f"[{ctx.quantization}] estimator[{target}] x{s}: {_short(res)}")
    return rows


@dataclass
class Context:
    """The expansion point of one setting: model, adapter weights, val batches with features."""

    quantization: str
    model: object
    projector: object
    weights: list
    A0: list
    B0: list
    w_norms: list
    batches: list


def run_setting(args, quantization: str) -> dict:
    """Everything for one quantization setting; returns its part of the report."""
    import torch

    from core.adapters import layers_to_transform
    from core.features import load_extraction_model, prepare_for_extraction

    t0 = time.perf_counter()
    say(f"[{quantization}] estimator updates: gradient stores (core.pipeline) + fit_update")
    est = {t: estimator_update(args, quantization, t) for t in TARGETS}
    for t, (_, info) in est.items():
        say(f"[{quantization}] fit on {t}: |w| = {info['w_norm']:.4g}, reg = {info['reg']:.3g}")

    say(f"[{quantization}] loading the expansion point")
    cfg = make_config(args, quantization, "choices")
    model, tok, projector = load_extraction_model(cfg)
    weights = lora_weights(model)
    A0 = [a.detach().clone() for a, _, _ in weights]
    B0 = [torch.zeros_like(b) for _, b, _ in weights]
    try:
        w_norms = base_weight_norms(weights)
    except Exception as err:  # relative weight change is optional: say why it is missing
        say(f"[{quantization}] base weight norms unavailable: {err}")
        w_norms = None

    say(f"[{quantization}] real fine-tune: {args.epochs} epochs on {args.rows} rows per task")
    A_ft, B_ft, ft_info = finetune_weights(args, quantization, model, weights)
    set_adapter(weights, A0, B0)
    prepare_for_extraction(model)
    say(f"[{quantization}] fine-tune done: |ΔB| = {_norm(B_ft):.4g}, history {ft_info['history']}")

    say(f"[{quantization}] expansion-point features (unprojected, D = {projector.D})")
    batches = val_batches(cfg, tok, args.batch_size)
    expansion_features(model, batches)
    full = _max_h_diff(real_forward(model, batches), batches)
    cache = LowerLayerCache(model, min(layers_to_transform(model, cfg.adapter.top_layers)))
    cache.fill(batches)
    ctx = Context(quantization, model, projector, weights, A0, B0, w_norms, batches)
    with cache:
        cached = _max_h_diff(real_forward(model, batches, cached=True), batches)
        say(f"[{quantization}] h0 check: full forward {full:.2e}, cached forward {cached:.2e}")
        rows = finetune_rows(ctx, A_ft, B_ft)
        for target, (w, info) in est.items():
            rows += estimator_rows(ctx, target, w, info)
    set_adapter(weights, A0, B0)
    return {
        "quantization": quantization,
        "D": projector.D,
        "k": projector.k,
        "A0_norm": _norm(A0),
        "val_rows": int(sum(len(b.rows) for b in batches)),
        "check_max_abs_h0_full_forward_vs_features": full,
        "check_max_abs_h0_cached_forward_vs_features": cached,
        "finetune": ft_info,
        "estimator": {t: info for t, (_, info) in est.items()},
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _max_h_diff(real: list[dict], batches: list[Batch]) -> float:
    """Largest |h_real − h0| over rows and targets (0 up to float rounding at the expansion
    point: validates the no-grad and the cached forward against the feature pass)."""
    return max(
        float(np.max(np.abs(r["h"][t] - b.h0[t])))
        for r, b in zip(real, batches, strict=True)
        for t in TARGETS
    )


def _short(res: dict) -> str:
    c, v = res["choices"]["lin_h"], res["vocab"]["lin_h"]
    return (
        f"|ΔB|={res['delta_B_norm']:.3g} change err: choices {c['change_rel_err']:.3g}, "
        f"vocab {v['change_rel_err']:.3g}"
    )


# --- summary --------------------------------------------------------------------------------


def norm_threshold(points: list[tuple[float, float]], thr: float) -> dict:
    """Largest ‖Δ_B‖ up to which the error stays under thr, from (norm, error) points.

    Walks the points by increasing norm; the first error above thr ends the walk and the
    threshold is log-log interpolated between it and the last point under thr.
    """
    points = sorted(points)
    last_ok = None
    for n, e in points:
        if e > thr:
            if last_ok is None:
                return {"delta_B_norm": None, "note": f"already above at the smallest norm {n:.3g}"}
            n0, e0 = last_ok
            t = math.log(thr / e0) / math.log(e / e0) if e > e0 else 0.0
            return {"delta_B_norm": math.exp(math.log(n0) + t * math.log(n / n0)), "note": ""}
        last_ok = (n, e)
    return {"delta_B_norm": points[-1][0], "note": "never above: at least the largest norm"}


def summarise(settings: list[dict]) -> dict:
    """Per setting, update kind, target and prediction: norm thresholds for 5% and 10%."""
    out = {}
    for st in settings:
        q = st["quantization"]
        for update in dict.fromkeys(r["update"] for r in st["rows"]):
            rows = [r for r in st["rows"] if r["update"] == update]
            ratio = None
            if update.startswith("estimator"):
                ratio = st["estimator"][update[len("estimator[") : -1]]["lift_ratio"]
            for t in TARGETS:
                for kind in ("lin_h", "lin_logits"):
                    pts = [(r["delta_B_norm"], r[t][kind]["change_rel_err"]) for r in rows]
                    entry = {}
                    for thr in THRESHOLDS:
                        th = norm_threshold(pts, thr)
                        if ratio and th["delta_B_norm"] is not None:
                            th["w_norm"] = th["delta_B_norm"] / ratio
                        entry[f"{int(thr * 100)}%"] = th
                    out[f"{q} | {update} | {t} | {kind}"] = entry
    return out


def recommend(settings: list[dict], summary: dict) -> dict:
    """The trust region in the estimator's own units (‖w‖) that keeps the change error under
    5% / 10%: the smallest threshold over settings, targets and both prediction kinds, next to
    the size of the real fine-tune's B update expressed in the same units."""
    out = {}
    for st in settings:
        q = st["quantization"]
        ratio = float(np.mean([e["lift_ratio"] for e in st["estimator"].values()]))
        ft = next(r for r in st["rows"] if r["update"] == "finetune" and r["scale"] == 1.0)
        entry = {
            "lift_ratio": ratio,
            "finetune_delta_B_norm": ft["delta_B_norm"],
            "finetune_delta_B_norm_in_w_units": ft["delta_B_norm"] / ratio,
            "finetune_rel_weight_change": (ft["rel_weight_change"] or {}).get("total"),
        }
        for thr in THRESHOLDS:
            key = f"{int(thr * 100)}%"
            ws = [
                v[key].get("w_norm")
                for k, v in summary.items()
                if k.startswith(f"{q} | estimator") and v[key].get("w_norm") is not None
            ]
            entry[f"w_norm_max_at_{key}"] = min(ws) if ws else None
        out[q] = entry
    at5 = [e["w_norm_max_at_5%"] for e in out.values() if e["w_norm_max_at_5%"] is not None]
    if at5:
        m = min(at5)
        digits = 10 ** math.floor(math.log10(m))
        out["suggested_max_norm"] = math.floor(m / digits) * digits
        out["rule"] = (
            "largest ‖w‖ (one significant digit, rounded down) under which every estimator "
            "update measured kept change_rel_err ≤ 5% for both targets and both predictions"
        )
    return out


def print_table(settings: list[dict]) -> None:
    head = (
        f"{'setting':7} {'update':19} {'scale':>5} {'|w|':>7} {'|ΔB|':>7} {'|ΔA|':>6} "
        f"{'relW%':>7} | {'choices: chg':>12} {'chgL':>6} {'rse':>8} {'corr':>5} "
        f"| {'vocab: chg':>10} {'chgL':>6} {'rse':>8} {'corr':>5} | {'acc':>4}"
    )
    print(head)
    print("-" * len(head))
    for st in settings:
        for r in st["rows"]:
            rel = r["rel_weight_change"]["total"] * 100 if r["rel_weight_change"] else float("nan")
            cells = []
            for t in TARGETS:
                m, ml = r[t]["lin_h"], r[t]["lin_logits"]
                cells.append(
                    f"{m['change_rel_err']:12.4f} {ml['change_rel_err']:6.3f} "
                    f"{m['paper_rse_mean']:8.2e} {m['corr']:5.2f}"
                )
            w = f"{r['w_norm']:7.3f}" if "w_norm" in r else f"{'-':>7}"
            print(
                f"{st['quantization']:7} {r['update']:19} {r['scale']:5g} {w} "
                f"{r['delta_B_norm']:7.3f} {r['delta_A_norm']:6.3f} {rel:7.4f} | "
                f"{cells[0]} | {cells[1][2:]} | {r['val_accuracy_real']:4.2f}"
            )
    print(
        "chg = change_rel_err of lin_h (h0 + g·ΔB); chgL = of lin_logits; rse = paper metric "
        "(mean rel. squared error of h); acc = real val accuracy"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quantization", nargs="+", default=["4bit", "none"], choices=["4bit", "none"])
    p.add_argument("--rows", type=int, default=32, help="train and val rows per task")
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--epochs", type=int, default=2, help="epochs of the real fine-tune")
    p.add_argument("--max-norm", type=float, default=1.0, help="fit_update's trust region")
    p.add_argument("--batch-size", type=int, default=16, help="val batch size")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--workspaces", default=str(ROOT / "workspaces"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "approximation.json"))
    args = p.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    start, load_before = time.time(), os.getloadavg()
    settings = [run_setting(args, q) for q in args.quantization]
    print_table(settings)
    summary = summarise(settings)
    report = {
        "command": " ".join([".venv/bin/python", "bench/approximation.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "settings": {
            "model": "smollm2-135m (float32 compute)",
            "quantizations": args.quantization,
            "adapter": "LoRA r=4 alpha=32 (scaling 8) on q,k,v of the top 8 of 30 layers, seed 0",
            "tasks": TASKS,
            "rows_per_task": {"train": args.rows, "val": args.rows},
            "max_tokens": args.max_tokens,
            "projection": "countsketch k=400 seed 0",
            "finetune": f"core.training.train_adapter, {args.epochs} epochs, lr 5e-4, batch 8",
            "finetune_scales": list(FT_SCALES),
            "estimator": f"fit_update(max_norm={args.max_norm}) per target on stored features",
            "estimator_scales": list(EST_SCALES),
            "torch_threads": args.threads,
        },
        "metrics": METRICS,
        "predictions": PREDICTIONS,
        "norms": {
            "w_norm": "‖s·w‖, the estimator's own norm (what estimator.max_norm caps)",
            "delta_B_norm": "‖Δ_B‖ over all LoRA B entries (= ‖Π s·w‖ for estimator updates)",
            "delta_A_norm": "‖A − A0‖ (fine-tune only; the estimator never moves A)",
            "rel_weight_change": "‖scaling·B·A‖_F / ‖W‖_F of the adapted matrices (W "
            "dequantised for 4-bit); total = sqrt(Σ‖ΔW‖²)/sqrt(Σ‖W‖²)",
            "lift_ratio": "‖Πw‖/‖w‖ of the fitted update (≈ sqrt(D/k) for countsketch)",
        },
        "thresholds": summary,
        "recommendation": recommend(settings, summary),
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "wall_seconds": round(time.time() - start, 1),
        "results": settings,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for key, entry in summary.items():
        print(key, json.dumps(entry))
    print("recommendation", json.dumps(report["recommendation"], indent=1))
    print(f"wrote {args.out} ({report['wall_seconds']} s)")


if __name__ == "__main__":
    main()
