"""Benchmark: the first-order approximation error, measured two ways on the recipe GroupTune runs.

Uses the workspace of bench/agreement.py (unprojected features, so g = ∂h/∂B exactly, and real
fine-tunes made with A frozen at the features' init). For the first --subsets subsets:

  paper protocol   as the reference's fast_estimate_eval_approximation.py: the estimated update
                   (the replay's w, a direction in B) rescaled to s·‖θ*_LoRA‖ (the norm of the
                   adapter's parameters at the expansion point, i.e. ‖A0‖ since B = 0) for
                   s in 0.02..0.10; on TRAIN rows, err = mean_e ((h0 + gᵀΔ − h_real)
                   / max(|h_real|, |h0|))²
  real updates     Δ = the real fine-tuned B of that subset (seed 0; A is still A0), the same
                   error on train and val rows, and the relative error of the predicted change
                   ‖h_pred − h_real‖ / ‖h_real − h0‖

h is the gold answer's log-odds among the answer words (the features' target), computed from a
real no-grad forward pass (core.models.scoring.choice_logits) with B set to Δ.

    .venv/bin/python bench/approx_paper.py [--tag claims] [--subsets 4]
Writes bench/results/approx_paper.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GROUPTUNE_PROGRESS", "0")

import numpy as np  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SCALES = (0.02, 0.04, 0.06, 0.08, 0.10)
EPS = 1e-6


def h_of(z: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Log-odds of the gold answer among the answer words, clamped as core.gradients.extract does."""
    logp = z[np.arange(len(z)), gold] - logsumexp(z, axis=1)
    logp = np.clip(logp, np.log(EPS), np.log1p(-EPS))
    return logp - np.log(-np.expm1(logp))


def paper_error(h0, h_pred, h_real) -> float:
    return float(np.mean(((h_pred - h_real) / np.maximum(np.abs(h_real), np.abs(h0))) ** 2))


def change_error(h0, h_pred, h_real) -> float:
    return float(np.linalg.norm(h_pred - h_real) / max(np.linalg.norm(h_real - h0), 1e-12))


class Model:
    """The base model with a fresh seeded adapter whose B can be set to any flat vector."""

    def __init__(self, cfg, ws):
        from core.models import prefix
        from core.models.adapters import attach_adapter, lora_b_parameters
        from core.models.loading import load_model

        model, self.tok = load_model(cfg.model)
        self.peft = attach_adapter(model, cfg.adapter)
        prefix.attach(self.peft, cfg, ws)
        self.peft.eval()
        self.B = [p for _, p in lora_b_parameters(self.peft)]
        self.A0 = float(
            np.sqrt(sum(float(p.detach().double().square().sum()) for n, p in
                        self.peft.named_parameters() if ".lora_A." in n))
        )  # fmt: skip
        self.cfg = cfg

    def set_b(self, flat: np.ndarray) -> None:
        import torch

        with torch.no_grad():
            at = 0
            for p in self.B:
                p.copy_(torch.as_tensor(flat[at : at + p.numel()]).view(p.shape).to(p.dtype))
                at += p.numel()

    def h(self, task, split: str) -> np.ndarray:
        from core.data.prompts import encode_split
        from core.models.scoring import choice_logits

        enc = encode_split(self.tok, task, split, self.cfg.data.max_tokens)
        z = choice_logits(self.peft, self.tok, enc, self.cfg.features.batch_size, desc=None)
        return h_of(np.asarray(z, dtype=np.float64), enc.gold)


def b_vector(model: Model, ws, name: str) -> np.ndarray:
    """The real fine-tuned B of adapter `name`, flattened in lora_b_parameters order."""
    from safetensors.numpy import load_file

    from core.models.adapters import lora_b_parameters

    weights = load_file(str(ws.adapter_dir(name) / "adapter_model.safetensors"))
    names = [n.replace(".default", "") for n, _ in lora_b_parameters(model.peft)]
    return np.concatenate([weights[n].reshape(-1) for n in names]).astype(np.float64)


def subset_errors(model: Model, ws, tasks, feats, tcfg, name: str) -> dict:
    from core.estimate.replay import replay

    fit = replay([feats[t] for t in tasks], tcfg)
    direction = fit.w / np.linalg.norm(fit.w)
    g = {t: np.asarray(feats[t].train_g, dtype=np.float64) for t in tasks}
    h0 = {t: np.asarray(feats[t].train_h, dtype=np.float64) for t in tasks}
    by_task = {t: model_task(model, t) for t in tasks}
    paper = {}
    for s in SCALES:
        delta = s * model.A0 * direction
        model.set_b(delta)
        errs = []
        for t in tasks:
            real = model.h(by_task[t], "train")
            errs.append(paper_error(h0[t], h0[t] + g[t] @ delta, real))
        paper[f"{s:g}"] = float(np.mean(errs))
    delta = b_vector(model, ws, name)
    model.set_b(delta)
    real_rows = {}
    for t in tasks:
        real = model.h(by_task[t], "train")
        pred = h0[t] + g[t] @ delta
        real_rows[t] = {
            "paper_error_train": paper_error(h0[t], pred, real),
            "change_error_train": change_error(h0[t], pred, real),
        }
    model.set_b(np.zeros_like(delta))
    return {
        "subset": "+".join(tasks),
        "theta_lora_norm": model.A0,
        "replay_norm": fit.norm,
        "real_b_norm": float(np.linalg.norm(delta)),
        "real_over_theta": float(np.linalg.norm(delta) / model.A0),
        "paper_protocol": paper,
        "real_update": real_rows,
    }


_TASKS: dict = {}


def model_task(model: Model, name: str):
    if not _TASKS:
        from core.data.sources import load_tasks

        _TASKS.update({t.name: t for t in load_tasks(model.cfg)})
    return _TASKS[name]


def main() -> None:
    from bench.machine import machine_info
    from core.config import load_config
    from core.gradients.store import load_features
    from core.validate.subsets import adapter_name
    from core.workspace import Workspace

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tag", default="claims")
    p.add_argument("--subsets", type=int, default=4)
    args = p.parse_args()
    source = json.loads((ROOT / "bench" / "results" / f"agreement-{args.tag}.json").read_text())
    ws = Workspace(ROOT / "workspaces" / f"bench-agreement-{args.tag}")
    cfg = load_config(ws.config_path)
    seed = source["seeds"][0]
    tcfg = cfg.training.model_copy(update={"seed": seed})
    feats = {t: load_features(ws, t) for t in cfg.task_names}
    model = Model(cfg, ws)
    rows = []
    for tasks in source["subsets"][: args.subsets]:
        start = time.perf_counter()
        name = f"{adapter_name(tasks)}-s{seed}"
        rows.append(subset_errors(model, ws, tasks, feats, tcfg, name))
        print(f"{'+'.join(tasks)}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    summary = {
        "paper_protocol": {
            s: float(np.mean([r["paper_protocol"][s] for r in rows]))
            for s in rows[0]["paper_protocol"]
        },
        "real_update_paper_error_train": float(
            np.mean([v["paper_error_train"] for r in rows for v in r["real_update"].values()])
        ),
        "real_update_change_error_train": float(
            np.mean([v["change_error_train"] for r in rows for v in r["real_update"].values()])
        ),
        "real_over_theta": [r["real_over_theta"] for r in rows],
    }
    out = {
        "command": "python bench/approx_paper.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "workspace": str(ws.root.relative_to(ROOT)),
        "summary": summary,
        "subsets": rows,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path = ROOT / "bench" / "results" / "approx_paper.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
