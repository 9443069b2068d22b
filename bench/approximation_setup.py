"""What bench/approximation.py measures on: its tasks, scales and metrics, the config and workspace of each setting, and the val batches."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # core/, when the bench runs from a checkout
os.environ.setdefault("GROUPTUNE_PROGRESS", "0")


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
    "(unprojected): the form the estimator uses on val rows (core.estimate.estimator module doc)",
    "lin_h_proj": "estimator updates only: h0 + (Πᵀg)·(s·w), projected features (equals lin_h "
    "up to float rounding, since <Πᵀg, w> = <g, Πw>)",
}


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
    from core.data.prompts import encode_split, pad_batch
    from core.data.sources import load_tasks

    out = []
    for task in load_tasks(cfg):
        enc = encode_split(tok, task, "val", cfg.data.max_tokens)
        order = np.argsort(enc.lengths, kind="stable")
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            inputs = pad_batch([enc.input_ids[i] for i in idx], tok.pad_token_id)
            out.append(Batch(task.name, idx, inputs, enc.choice_ids, enc.gold[idx]))
    return out


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
        from core.models.prefix import PassThrough

        self.saved = [self.layers[i] for i in range(self.first)]
        for i in range(self.first):
            self.layers[i] = PassThrough()  # core.models.prefix's, as the product skips them
        return self

    def __exit__(self, *exc):
        for i, layer in enumerate(self.saved):
            self.layers[i] = layer


def short_name(res: dict) -> str:
    c, v = res["choices"]["lin_h"], res["vocab"]["lin_h"]
    return (
        f"|ΔB|={res['delta_B_norm']:.3g} change err: choices {c['change_rel_err']:.3g}, "
        f"vocab {v['change_rel_err']:.3g}"
    )
