"""The training loop of one adapter (core.train.trainer runs it as a stage): task-homogeneous
batches, the answer-word loss, AdamW with the recipe's lr curve and clipping (core.recipe),
validation after every epoch, the kept epoch, checkpoints within and between epochs."""

from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from core.accounting import Meter
from core.data.prompts import Answers
from core.errors import GroupTuneError
from core.models import prefix
from core.models.scoring import answer_logits, choice_scores, model_device
from core.progress import computing, log_metrics, track
from core.recipe import GRAD_CLIP, epoch_plan, is_better, lr_at, should_stop
from core.train.run import Run, TrainState, save_checkpoint


def make_batch(run: Run, task_index: int, rows: np.ndarray) -> tuple[dict, torch.Tensor]:
    """Left-padded inputs (answer position last; with multi-token answer words each row's
    sequences, core.models.prefix.model_inputs) and the gold answers (B,), indices into the
    task's answer words."""
    enc = run.train[task_index]
    device = model_device(run.model)
    batch = prefix.model_inputs(run.model, enc, rows, run.tokenizer.pad_token_id, device)
    return batch, torch.as_tensor(enc.gold[rows], device=device)


def answer_loss(model, batch: dict, gold: torch.Tensor, answers: Answers, kind: str, offset=None):
    """Mean cross-entropy of the gold answer: over the task's answer words (`kind` "choices";
    `offset` (B, C), boosting's, is added to their scores first) or over the full vocabulary
    ("vocab": −log p of the gold word, per token for a word of several)."""
    logits = answer_logits(model, batch, answers)
    if kind == "vocab" and answers.single:
        targets = torch.as_tensor(answers.ids, device=gold.device)[gold]
        return F.cross_entropy(logits[:, -1].float(), targets)
    z, _ = choice_scores(logits, answers, mean=kind == "vocab")
    if kind == "vocab":
        return -z.gather(1, gold[:, None]).mean()
    return F.cross_entropy(z if offset is None else z + offset, gold)


def _offset(run: Run, split: str, task_index: int, rows) -> torch.Tensor | None:
    if run.offsets is None:
        return None
    rows = np.asarray(rows)
    offset = torch.as_tensor(run.offsets[split][task_index][rows], dtype=torch.float32)
    return offset.to(model_device(run.model))


def fit(run: Run, state: TrainState) -> TrainState:
    """Train from `state` to training.epochs, checkpointing after every epoch (and every
    `checkpoint_seconds` within one). Returns the final state."""
    tcfg, model, opt = run.cfg.training, run.model, run.optimizer
    steps = run.steps_per_epoch
    meter = Meter(model_device(model)).start()
    wall_before, last_save = state.wall_seconds, time.monotonic()
    model.train()
    with _tracker(tcfg.epochs * steps, f"train {run.name}", run.progress) as bar:
        bar.update(state.step)
        for epoch in range(state.epoch, tcfg.epochs):
            if should_stop(_val_history(state), tcfg.patience):
                break  # early stopping (also when resuming a run that had already stopped)
            for i, (t, rows) in enumerate(epoch_plan(run.train, tcfg, epoch, run.names)):
                if i < state.batch_in_epoch:
                    continue  # done before the mid-epoch checkpoint we resumed from
                # -- lr
                lr = lr_at(state.step, tcfg, steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                # -- forward/backward
                batch, gold = make_batch(run, t, rows)
                answers, kind = run.train[t].answers, tcfg.loss
                loss = answer_loss(
                    model, batch, gold, answers, kind, _offset(run, "train", t, rows)
                )
                loss.backward()
                # -- step
                grad_norm = torch.nn.utils.clip_grad_norm_(_trainable(model), GRAD_CLIP)
                opt.step()
                opt.zero_grad(set_to_none=True)
                state.step, state.batch_in_epoch = state.step + 1, i + 1
                state.tokens += int(batch["attention_mask"].sum())
                state.padded_tokens += batch["attention_mask"].numel()
                # -- log
                record = {"kind": "step", "epoch": epoch + 1, "step": state.step}
                record |= {"task": run.train[t].task, "loss": loss.item(), "lr": lr}
                _log(run, state, record | {"grad_norm": float(grad_norm)})
                bar.update(1, f"epoch {epoch + 1} loss {loss.item():.3f}")
                # -- checkpoint (mid-epoch, time-based: long epochs on a CPU)
                if time.monotonic() - last_save >= run.checkpoint_seconds and i + 1 < steps:
                    _stamp(state, meter, wall_before)
                    save_checkpoint(run, state, new_best=False)
                    last_save = time.monotonic()
            # -- eval + checkpoint (end of epoch)
            new_best = _validate(run, state, epoch)
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            _stamp(state, meter, wall_before)
            save_checkpoint(run, state, new_best=new_best)
            last_save = time.monotonic()
            model.train()
    return state


def _validate(run: Run, state: TrainState, epoch: int) -> bool:
    """Val metrics of every task; update the best epoch. True if this epoch is the new best."""
    from core.train.evaluation import summarize, task_logits

    scored = task_logits(run.model, run.tokenizer, run.tasks, run.cfg, split="val")
    if run.offsets is not None:
        off = dict(zip([t.name for t in run.tasks], run.offsets["val"], strict=True))
        scored = {t: (lg + off[t], gold) for t, (lg, gold) in scored.items()}
    val = summarize(scored)
    state.val_passes += 1
    acc, nll = val["mean"]["accuracy"], val["mean"]["nll"]
    new_best = is_better(val["mean"], state.best_val["mean"] if state.best_val else None)
    if new_best:
        state.best_epoch, state.best_val = epoch + 1, val
    state.history.append({"epoch": epoch + 1, "mean_accuracy": acc, "mean_nll": nll})
    per_task = {k: v for k, v in val.items() if k != "mean"}
    record = {"kind": "val", "epoch": epoch + 1, "step": state.step, "val": per_task}
    _log(run, state, record | {"mean_accuracy": acc, "mean_nll": nll, "best": new_best})
    return new_best


def _val_history(state: TrainState) -> list[dict]:
    return [{"nll": h["mean_nll"], "accuracy": h["mean_accuracy"]} for h in state.history]


def _trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _stamp(state: TrainState, meter: Meter, wall_before: float) -> None:
    state.wall_seconds = wall_before + meter.elapsed()
    peak = meter.peak_memory()
    state.peak_memory_bytes = max(state.peak_memory_bytes, peak["peak_memory_bytes"])
    state.peak_rss_bytes = max(state.peak_rss_bytes, peak["peak_rss_bytes"])


def _log(run: Run, state: TrainState, record: dict) -> None:
    """Append one record to metrics.jsonl and send it to the job, if any."""
    record = {"adapter": run.name, **record}
    with open(run.out / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    state.metrics_lines += 1
    log_metrics(record)


class _NullTracker(computing):
    """No bar (e.g. a boosting round's inner training), but still the stage's compute."""

    def update(self, n: int = 1, message: str | None = None) -> None:
        pass


def _tracker(total: int, desc: str, progress: bool):
    return track(total, desc, unit="step") if progress else _NullTracker()


def freeze_lora_a(model) -> None:
    """Keep every A at its seeded init (LoRA-FA): only B trains, as the estimator assumes."""
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            p.requires_grad_(False)


def make_optimizer(model, cfg) -> torch.optim.Optimizer:
    """AdamW over the adapter's weights; bitsandbytes' paged AdamW on CUDA with a quantized base
    (the QLoRA recipe), torch's AdamW otherwise."""
    params, tcfg = _trainable(model), cfg.training
    if not params:
        raise GroupTuneError("the model has no trainable parameters (no adapter attached?)")
    if model_device(model).type == "cuda" and cfg.model.quantization != "none":
        try:
            import bitsandbytes as bnb

            return bnb.optim.PagedAdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        except (ImportError, AttributeError, RuntimeError):
            pass
    return torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
