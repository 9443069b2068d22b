"""Test-split evaluation of the zero-shot base, the baseline adapter and the ensemble."""

from __future__ import annotations

from core.config import ExperimentConfig
from core.prompts import encode_split
from core.scoring import choice_logits, metrics_from_logits, with_mean
from core.tasks import Task, load_tasks
from core.workspace import Workspace


def evaluate_model(
    model, tokenizer, tasks: list[Task], cfg: ExperimentConfig, split="test"
) -> dict:
    """Per-task metrics (accuracy, f1, ece, nll, n) of one model, plus their unweighted mean."""
    per_task = {}
    for task in tasks:
        enc = encode_split(tokenizer, task, split, cfg.data.max_tokens)
        logits = choice_logits(
            model, tokenizer, enc, cfg.features.batch_size, desc=f"{split} {task.name}"
        )
        per_task[task.name] = metrics_from_logits(logits, enc.gold)
    return with_mean(per_task)


def evaluate_zero_shot(cfg: ExperimentConfig, ws: Workspace, force: bool = False) -> dict:
    """Score the base model (no adapter) on every task's test split; saved as eval/zero_shot.json.

    Reused when the model, the tasks' contents and the token budget are unchanged.
    """
    from core.models import load_model, model_fingerprint

    tasks = load_tasks(cfg)
    fingerprint = {
        "model": model_fingerprint(cfg.model),
        "tasks": {t.name: t.content_hash() for t in tasks},
        "max_tokens": cfg.data.max_tokens,
    }
    old = ws.read("eval", "zero_shot.json")
    if not force and old and old.get("fingerprint") == fingerprint:
        return old["metrics"]
    from core import prefix

    model, tokenizer = load_model(cfg.model)
    prefix.attach(model, cfg, ws)
    result = evaluate_model(model, tokenizer, tasks, cfg)
    record = {"model": "zero_shot", "split": "test", "metrics": result, "fingerprint": fingerprint}
    ws.write(record, "eval", "zero_shot.json")
    return result
