"""What the parts of bench/claims.py share: paths, the paper's numbers, progress lines, small helpers."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # core/, when the bench runs from a checkout


SEEDS = (0, 1)


PAPER = {
    "approximation": "relative squared error of h < 1% (LoRA, averaged over examples)",
    "estimation": "relative error of the estimated loss < 5% against real fine-tuning",
    "speedup": "105x: scoring K subsets (Step 1 included) vs fine-tuning them",
    "ensemble": "up to +10 points mean test accuracy over one QLoRA adapter",
    "flops": "for +9% FLOPs (1.09x) over one QLoRA adapter",
}


PAPER_VALUES = {"rse": 0.01, "loss_rel_error": 0.05, "speedup": 105, "gain": 10, "flops": 1.09}


def say(msg: str) -> None:
    """Progress line on stderr (stdout stays free for the summary)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 2)


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def make_config(args):
    """The full sample config reduced by the CLI caps (or the tests' tiny experiment)."""
    from core.config import load_config

    if args.smoke:
        from tests.conftest import write_tiny_experiment

        return load_config(write_tiny_experiment(args.smoke_dir, adapter={"top_layers": 1}))
    cfg = load_config(args.config)
    caps = {"max_train": args.max_train, "max_val": args.max_val, "max_test": args.max_test}
    return cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={**caps, "max_tokens": args.max_tokens}),
            "adapter": cfg.adapter.model_copy(update={"top_layers": args.top_layers}),
            "model": cfg.model.model_copy(update={"dtype": args.dtype, "threads": args.threads}),
            "training": cfg.training.model_copy(
                update={"epochs": args.epochs or cfg.training.epochs}
            ),
        }
    )


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def table(head: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def fmt(v, spec=".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def load_result(name: str) -> dict | None:
    path = ROOT / "bench" / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def settings(cfg, args, ws) -> dict:
    keys = ("model", "adapter", "data", "features", "estimator", "training", "grouping", "ensemble")
    return {
        "description": describe(cfg, args),
        "workspace": str(ws.root),
        "subsets_requested": args.subsets,
        "config": {k: getattr(cfg, k).model_dump(mode="json") for k in keys},
        "tasks": cfg.task_names,
    }


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def describe(cfg, args) -> str:
    d = cfg.data
    if args.smoke:
        return "Smoke run: the tests' tiny experiment (tiny-llama, 3 tiny tasks): no meaning."
    return (
        f"The full sample config ({args.config.name}: {len(cfg.tasks)} tasks, {cfg.model.name} "
        f"{cfg.model.quantization}, LoRA r={cfg.adapter.r}) reduced for time to {d.max_train} train / {d.max_val} val / "
        f"{d.max_test} test rows per task, {d.max_tokens} tokens, {cfg.training.epochs} epochs, "
        f"adapter on the top {cfg.adapter.top_layers} layers, {cfg.model.dtype} compute. "
        "Small data: accuracies move by 1/rows per example; read them as this config's, not "
        "the paper's setting (10 SuperGLUE tasks on Llama models)."
    )


PART_NAMES = {"a": "estimation", "b": "speedup", "c": "approximation", "d": "ensemble"}
