"""Train one LoRA/QLoRA adapter on the union of some tasks (a group, or all of them).

`train_adapter(cfg, ws, name, task_names)` is the whole stage; its loop is `core.train.loop.fit`. The group
adapters are `group-<i>`; the single-QLoRA baseline is `train_adapter(cfg, ws, "baseline", all)`.

Recipe: task-homogeneous mini-batches of `training.batch_size`, shuffled across tasks with an
order that depends only on (seed, epoch); loss = cross-entropy of the gold answer at the answer
position, over the task's answer words (training.loss "choices", the features' own target) or
the full vocabulary ("vocab"); with training.freeze_a (default) every A stays at its seeded
init and only B trains (LoRA-FA), so the fine-tune stays in the estimator's model family;
AdamW (paged AdamW from bitsandbytes on CUDA with a quantized base), linear warmup over the
first 10% of an epoch's steps then a constant lr, gradient norm clipped at 1 (core.recipe);
validation on every task after each epoch; the epoch with the lowest mean val NLL (ties:
higher mean val accuracy) is kept (core.recipe.SELECTION); training stops early after
training.patience epochs without a new best (core.recipe.should_stop), at most training.epochs.

Folder ws.adapter_dir(name):
  adapter_config.json, adapter_model.safetensors   the best epoch (PeftModel.from_pretrained)
  grouptune.json   tasks, config snapshot, fingerprints, best epoch, val metrics, accounting;
                   written last, so its presence means the adapter is complete
  metrics.jsonl    {"kind": "step", epoch, step, task, loss, lr, grad_norm} per step and
                   {"kind": "val", epoch, step, val, mean_accuracy, mean_nll, best} per epoch
  checkpoint/      adapter.safetensors (latest), best.safetensors, state.pt (optimizer + RNG,
                   tensors only: torch.load(weights_only=True)), state.json (loop state and the
                   fingerprint of the run). Replaced as a whole folder, so it is never half-written.
A rerun resumes from checkpoint/ and ends with exactly the adapter and metrics an uninterrupted
run gives; a checkpoint made with another base model, adapter, recipe or data is refused.
Within an epoch a checkpoint is saved every `checkpoint_seconds` (env GROUPTUNE_CHECKPOINT_S,
else 600; 0 saves after every step, as the kill-and-resume tests of workers do).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from core.accounting import stage_entry
from core.data.prompts import Encoded, encode_split
from core.data.sources import select_tasks
from core.errors import DataError, GroupTuneError
from core.io import write_json
from core.models import prefix
from core.models.flops import count_flops, padded_tokens
from core.recipe import (
    epoch_plan,
)
from core.train.freshness import stale_reason
from core.train.loop import answer_loss, fit, freeze_lora_a, make_batch, make_optimizer
from core.train.run import (
    CHECKPOINT,
    Run,
    TrainState,
    check_fingerprint,
    checkpoint_folder,
    checkpoint_interval,
    load_adapter_weights,
    load_checkpoint,
    read_json_file,
    record_accounting,
    run_fingerprint,
)
from core.train.twins import copy_twin, find_twin, known_without_model, run_digest

OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError)


def check_train_data(name: str, train: list[Encoded]) -> None:
    """Refuse data an adapter cannot learn from: no rows, or a task whose rows share one label."""
    if sum(len(enc) for enc in train) == 0:
        raise DataError(f"adapter {name!r}: its tasks have no training rows")
    for enc in train:
        if len(enc) == 0:
            raise DataError(f"task {enc.task!r} has no training rows", field="train")
        if len(np.unique(enc.gold)) < 2:
            raise DataError(
                f"task {enc.task!r}: every training row has the same label, so there is "
                "nothing to learn; add rows of the other labels",
                field="label",
            )


def _setup(cfg, ws, name: str, task_names: list[str]) -> Run:
    """Load tasks and model, attach a fresh seeded adapter, encode the data, make the optimizer."""
    from core.models.adapters import attach_adapter
    from core.models.loading import load_model

    out = ws.adapter_dir(name)
    tasks = select_tasks(cfg, task_names)
    model, tokenizer = load_model(cfg.model)
    model = attach_adapter(model, cfg.adapter)
    if cfg.training.freeze_a:
        freeze_lora_a(model)
    prefix.attach(model, cfg, ws)
    train = [encode_split(tokenizer, t, "train", cfg.data.max_tokens) for t in tasks]
    check_train_data(name, train)
    val_tokens = sum(
        padded_tokens(
            encode_split(tokenizer, t, "val", cfg.data.max_tokens).lengths, cfg.features.batch_size
        )
        for t in tasks
    )
    fingerprint = run_fingerprint(cfg, model, tasks)
    optimizer = make_optimizer(model, cfg)
    return Run(cfg, name, out, model, tokenizer, optimizer, tasks, train, val_tokens, fingerprint)


def _finished(run: Run, restart: bool) -> dict | None:
    """The stored result if this adapter is fresh (core.train.freshness, the rule the
    dashboard shows); refuse a foreign one (other settings), naming what differs; None when
    there is work left (none yet, or fewer epochs than asked: trained on from its checkpoint)."""
    path = run.out / "grouptune.json"
    if restart or not path.exists():
        return None
    done = read_json_file(path)
    check_fingerprint(done.get("fingerprint", {}), run.fingerprint, run.out)
    hashes = run.fingerprint["data"]["tasks"]
    return (
        done if stale_reason(done, run.cfg, [t.name for t in run.tasks], hashes) is None else None
    )


def train_adapter(cfg, ws, name: str, task_names: list[str], progress: bool = True, **kw) -> dict:
    """Train (or resume, or return the finished) adapter `name` on the union of `task_names`.

    Returns the grouptune.json record: tasks, best_epoch, val_metrics (per task + mean),
    history, accounting, path. `restart=True` deletes an existing folder and starts over.
    `checkpoint_seconds`: between mid-epoch checkpoints (None: `checkpoint_interval()`).
    One writer at a time: a second process training the same adapter waits, then finds it
    finished (core.locks).
    """
    from core.locks import artifact_lock, lock_path

    with artifact_lock(lock_path(ws.root, "adapter", name), f"adapter {name}"):
        return _train_adapter(cfg, ws, name, task_names, progress, **kw)


def _train_adapter(
    cfg,
    ws,
    name: str,
    task_names: list[str],
    progress: bool = True,
    *,
    restart: bool = False,
    checkpoint_seconds: float | None = None,
    offsets: dict[str, list[np.ndarray]] | None = None,
) -> dict:
    if checkpoint_seconds is None:
        checkpoint_seconds = checkpoint_interval()
    out = ws.adapter_dir(name)
    if restart:
        shutil.rmtree(out, ignore_errors=True)
    else:
        known = known_without_model(cfg, ws, name, task_names, offsets)
        if known is not None:
            return known
    run = _setup(cfg, ws, name, task_names)
    run.progress, run.checkpoint_seconds = progress, checkpoint_seconds
    if offsets is not None:  # what the adapter learns depends on them: part of its identity
        if cfg.training.loss != "choices":
            raise GroupTuneError("training with logit offsets needs training.loss 'choices'")
        run.offsets = offsets
        run.fingerprint["data"]["offsets"] = run_digest(offsets)
    done = _finished(run, restart)
    if done is not None:
        return done
    twin = None if restart else find_twin(ws, run)
    if twin is not None:
        return copy_twin(twin, run, ws)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grouptune.json").unlink(missing_ok=True)  # incomplete until rewritten at the end
    state = load_checkpoint(run)
    if state is not None:
        print(
            f"{name}: resuming from its checkpoint (epoch {state.epoch}, step {state.step})",
            file=sys.stderr,
        )
    if state is None:
        (out / "metrics.jsonl").unlink(missing_ok=True)
        torch.manual_seed(cfg.training.seed)  # dropout RNG; restored from checkpoints after
        state = TrainState()
    try:
        rates = _flop_rates(run)
        state = fit(run, state)
    except OOM_ERRORS as err:
        raise _oom_error(run, err) from None
    return _finish(run, state, rates, ws)


def _flop_rates(run: Run) -> dict:
    """FLOPs per padded token of a training step and of a validation forward, measured on the
    first batch of epoch 1 (the same batch however the run was resumed)."""
    t, rows = epoch_plan(run.train, run.cfg.training, 0, run.names)[0]
    batch, gold = make_batch(run, t, rows)
    answers, kind = run.train[t].answers, run.cfg.training.loss
    train = count_flops(run.model, batch, True, lambda m, b: answer_loss(m, b, gold, answers, kind))
    val = count_flops(run.model, batch, False)
    return {"train": train.per_token, "val": val.per_token, "method": train.method}


def _oom_error(run: Run, err: BaseException) -> GroupTuneError:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    folder = checkpoint_folder(run.out)
    where = "no checkpoint yet"
    if folder is not None:
        saved = read_json_file(folder / "state.json")["state"]
        where = f"the checkpoint at epoch {saved['epoch']}, step {saved['step']} is intact"
    return GroupTuneError(
        f"out of memory while training adapter {run.name!r} ({type(err).__name__}) with "
        f"training.batch_size={run.cfg.training.batch_size} and "
        f"data.max_tokens={run.cfg.data.max_tokens}: lower one of them ({where}; rerunning "
        "with the same settings resumes from it, smaller settings retrain with restart=True)."
    )


def _finish(run: Run, state: TrainState, rates: dict, ws) -> dict:
    """Save the best epoch as a PEFT folder, then grouptune.json (last), and the accounting."""
    load_adapter_weights(run.model, run.out / CHECKPOINT / "best.safetensors")
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.tmp-", dir=run.out))
    try:
        run.model.save_pretrained(str(tmp))
        for fname in ("adapter_config.json", "adapter_model.safetensors"):
            os.replace(tmp / fname, run.out / fname)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    train_flops = int(rates["train"] * state.padded_tokens)
    val_flops = int(rates["val"] * run.val_padded_tokens * state.val_passes)
    accounting = stage_entry(
        train_flops + val_flops,
        state.wall_seconds,
        state.peak_memory_bytes,
        state.tokens,
        rates["method"] + " per token x tokens",
        train_flops=train_flops,
        val_flops=val_flops,
        padded_tokens=state.padded_tokens,
        steps=state.step,
        peak_rss_bytes=state.peak_rss_bytes,
    )
    cfg = run.cfg
    record = {
        "name": run.name,
        "tasks": [t.name for t in run.tasks],
        "epochs": cfg.training.epochs,
        "best_epoch": state.best_epoch,
        "epochs_run": len(state.history),
        "stopped_early": len(state.history) < cfg.training.epochs,
        "steps": state.step,
        "val_metrics": state.best_val,
        "history": state.history,
        "accounting": accounting,
        "config": {
            k: getattr(cfg, k).model_dump(mode="json")
            for k in ("model", "adapter", "training", "data")
        },
        "fingerprint": run.fingerprint,
        "base_model": run.fingerprint["base_model"],
    }
    write_json(run.out / "grouptune.json", record)
    record_accounting(ws, run.name, accounting)
    return record
