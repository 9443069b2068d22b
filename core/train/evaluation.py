"""Test-split evaluation of the zero-shot base, the baseline adapter and the ensemble."""

from __future__ import annotations

from core.config import ExperimentConfig
from core.data.prompts import encode_split
from core.data.sources import load_tasks
from core.data.tasks import Task, content_hashes
from core.models.scoring import choice_logits, metrics_from_logits, with_mean
from core.workspace import Workspace


def task_logits(model, tokenizer, tasks: list[Task], cfg: ExperimentConfig, split="test") -> dict:
    """{task: ((n, C) choice logits, (n,) gold)} of one model on each task's split."""
    out = {}
    for task in tasks:
        enc = encode_split(tokenizer, task, split, cfg.data.max_tokens)
        desc = f"{split} {task.name}"
        out[task.name] = (
            choice_logits(model, tokenizer, enc, cfg.features.batch_size, desc),
            enc.gold,
        )
    return out


def summarize(scored: dict) -> dict:
    """Per-task metrics (accuracy, f1, ece, nll, n) plus their unweighted mean, from task_logits."""
    return with_mean({t: metrics_from_logits(lg, gold) for t, (lg, gold) in scored.items()})


def correct_rows(scored: dict) -> dict[str, list[int]]:
    """{task: 1/0 per row, in row order}: whether the top choice is gold (the paired samples
    core.stats bootstraps the gain from)."""
    return {t: (lg.argmax(axis=1) == gold).astype(int).tolist() for t, (lg, gold) in scored.items()}


def evaluate_model(
    model, tokenizer, tasks: list[Task], cfg: ExperimentConfig, split="test"
) -> dict:
    """Per-task metrics (accuracy, f1, ece, nll, n) of one model, plus their unweighted mean."""
    return summarize(task_logits(model, tokenizer, tasks, cfg, split))


def evaluate_zero_shot(cfg: ExperimentConfig, ws: Workspace, force: bool = False) -> dict:
    """Score the base model (no adapter) on every task's test split; saved as eval/zero_shot.json.

    Reused while current (core.train.eval_status: same model, test rows and token budget).
    """
    from core.models.loading import load_model
    from core.train.eval_status import eval_inputs, eval_status

    tasks = load_tasks(cfg)
    hashes = content_hashes(tasks)
    if not force and eval_status(ws, cfg, "zero_shot", hashes) == "fresh":
        return ws.read("eval", "zero_shot.json")["metrics"]
    from core.models import prefix

    model, tokenizer = load_model(cfg.model)
    prefix.attach(model, cfg, ws)
    scored = task_logits(model, tokenizer, tasks, cfg)
    result = summarize(scored)
    record = {"model": "zero_shot", "split": "test", "metrics": result}
    record["correct"] = correct_rows(scored)
    record["fingerprint"] = eval_inputs(ws, cfg, "zero_shot", hashes)
    ws.write(record, "eval", "zero_shot.json")
    return result
