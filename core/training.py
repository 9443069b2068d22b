"""Step 5: train one LoRA/QLoRA adapter on the union of some tasks (a group, or all of them).

`train_adapter(cfg, ws, name, task_names)` is the whole stage; `fit()` is its loop. The group
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

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core import prefix
from core.errors import DataError, GroupTuneError, StaleError
from core.flops import (
    Accounting,
    Meter,
    count_flops,
    padded_tokens,
    stage_entry,
)
from core.io import read_json, write_json
from core.progress import log_metrics, track
from core.prompts import Encoded, encode_split
from core.recipe import (
    GRAD_CLIP,
    epoch_plan,
    is_better,
    lr_at,
    should_stop,
    training_fingerprint,
)
from core.scoring import model_device
from core.tasks import Task, load_tasks

CHECKPOINT = "checkpoint"
CHECKPOINT_SECONDS = 600.0  # between mid-epoch checkpoints, unless GROUPTUNE_CHECKPOINT_S is set
OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError)


@dataclass
class TrainState:
    """Where the loop is; saved in every checkpoint, so a rerun continues exactly from it."""

    epoch: int = 0  # epochs finished
    batch_in_epoch: int = 0  # batches of the current epoch done (mid-epoch checkpoints)
    step: int = 0  # optimizer steps done
    best_epoch: int | None = None  # 1-based
    best_val: dict | None = None  # per-task val metrics (+ "mean") of the best epoch
    history: list = field(default_factory=list)  # per epoch: mean val accuracy and nll
    tokens: int = 0  # real (unpadded) training tokens
    padded_tokens: int = 0  # training token positions computed
    val_passes: int = 0  # validation passes done
    wall_seconds: float = 0.0  # summed over every (re)run
    peak_memory_bytes: int = 0  # CUDA peak on CUDA, else peak RSS
    peak_rss_bytes: int = 0
    metrics_lines: int = 0  # lines of metrics.jsonl belonging to this state


@dataclass
class Run:
    """The fixed inputs of one training run."""

    cfg: object  # ExperimentConfig
    name: str
    out: Path
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    tasks: list[Task]
    train: list[Encoded]
    val_padded_tokens: int
    fingerprint: dict
    progress: bool = True
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    # boosting (core.boosting): per split, per task, (n, C) logits added to the answer words'
    # logits, so the adapter learns what improves on the ensemble those offsets stand for
    offsets: dict[str, list[np.ndarray]] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return len(epoch_plan(self.train, self.cfg.training, 0))


# --- data -----------------------------------------------------------------------------------


def select_tasks(cfg, task_names: list[str]) -> list[Task]:
    """Load only the named tasks (validated, subsampled), in the order given."""
    if not task_names:
        raise GroupTuneError("an adapter needs at least one task")
    if len(set(task_names)) != len(task_names):
        raise GroupTuneError(f"task listed twice in {task_names}")
    specs = {t.name: t for t in cfg.tasks}
    unknown = [t for t in task_names if t not in specs]
    if unknown:
        raise GroupTuneError(f"unknown task(s) {unknown}; the config has {sorted(specs)}")
    return load_tasks(cfg.model_copy(update={"tasks": [specs[t] for t in task_names]}))


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


def make_batch(run: Run, task_index: int, rows: np.ndarray) -> tuple[dict, torch.Tensor, list]:
    """Left-padded inputs (answer position last), the gold targets (B,) and the answer-word
    ids the loss normalises over (None: the full vocabulary). Targets are indices into the
    answer words with training.loss "choices", vocabulary token ids with "vocab"."""
    enc = run.train[task_index]
    device = model_device(run.model)
    batch = prefix.model_inputs(run.model, enc, rows, run.tokenizer.pad_token_id, device)
    if run.cfg.training.loss == "choices":
        return batch, torch.as_tensor(enc.gold[rows], device=device), list(enc.choice_ids)
    targets = torch.tensor([enc.choice_ids[g] for g in enc.gold[rows]], device=device)
    return batch, targets, None


# --- the loop -------------------------------------------------------------------------------


def answer_loss(model, batch: dict, targets: torch.Tensor, choices=None, offset=None):
    """Mean cross-entropy of the gold answer at the answer position: over the task's answer
    words (`choices`: their token ids; targets index them) or over the full vocabulary.
    `offset` (B, C), with choices: added to the answer words' logits first (boosting)."""
    logits = model(**batch, logits_to_keep=1).logits[:, -1].float()  # (B, vocab)
    if choices is not None:
        logits = logits[:, choices]
    if offset is not None:
        logits = logits + offset
    return F.cross_entropy(logits, targets)


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
            for i, (t, rows) in enumerate(epoch_plan(run.train, tcfg, epoch)):
                if i < state.batch_in_epoch:
                    continue  # done before the mid-epoch checkpoint we resumed from
                # -- lr
                lr = lr_at(state.step, tcfg, steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                # -- forward/backward
                batch, targets, choices = make_batch(run, t, rows)
                loss = answer_loss(model, batch, targets, choices, _offset(run, "train", t, rows))
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
    from core.evaluation import summarize, task_logits

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


class _NullTracker:
    def update(self, n: int = 1, message: str | None = None) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _tracker(total: int, desc: str, progress: bool):
    return track(total, desc, unit="step") if progress else _NullTracker()


# --- checkpoints ----------------------------------------------------------------------------


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter's weights (peft names, without the adapter name), on the CPU, contiguous."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_weights(model, path: Path) -> None:
    """Load adapter weights saved by `adapter_state` into `model`; a bad file is named."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path))
    except Exception as err:  # safetensors raises its own error type for a damaged file
        raise GroupTuneError(f"{path}: adapter file is corrupted or unreadable ({err})") from None
    expected = set(adapter_state(model))
    if set(weights) != expected:
        raise GroupTuneError(f"{path}: adapter weights do not match this adapter's layers")
    set_peft_model_state_dict(model, weights)


def save_checkpoint(run: Run, state: TrainState, new_best: bool) -> None:
    """Write the checkpoint into a fresh folder, then swap it in (never a half-written one)."""
    from safetensors.torch import save_file

    final = run.out / CHECKPOINT
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.tmp-", dir=run.out))
    try:
        weights = adapter_state(run.model)
        save_file(weights, str(tmp / "adapter.safetensors"))
        if new_best:
            save_file(weights, str(tmp / "best.safetensors"))
        elif (final / "best.safetensors").exists():
            shutil.copy2(final / "best.safetensors", tmp / "best.safetensors")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"optimizer": run.optimizer.state_dict(), "rng": rng}, tmp / "state.pt")
        write_json(tmp / "state.json", {"fingerprint": run.fingerprint, "state": asdict(state)})
        _swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _checkpoint_folder(out: Path) -> Path | None:
    """The checkpoint folder, recovering it if a crash fell between the two renames of a swap."""
    final, old = out / CHECKPOINT, out / f".{CHECKPOINT}.old"
    if not final.exists() and old.exists():
        os.replace(old, final)
    return final if (final / "state.json").exists() else None


def _read_json_file(path: Path) -> dict:
    try:
        return read_json(path)
    except (OSError, ValueError) as err:
        raise GroupTuneError(f"{path}: corrupted or unreadable ({err})") from None


def check_fingerprint(saved: dict, current: dict, where: Path) -> None:
    """Refuse a checkpoint or adapter made with other settings, naming what differs."""
    labels = {
        "base_model": "base model",
        "adapter": "adapter config",
        "training": "training",
        "data": "task data",
    }
    for key, label in labels.items():
        if saved.get(key) != current.get(key):
            raise StaleError(
                f"{where} was made with another {label} ({saved.get(key)} vs now "
                f"{current.get(key)}); it is not reused. Delete the folder, pass restart=True "
                "(grouptune train --restart) or use another adapter name."
            )


def load_checkpoint(run: Run) -> TrainState | None:
    """Restore adapter, optimizer and RNG from checkpoint/ (None if there is none)."""
    folder = _checkpoint_folder(run.out)
    if folder is None:
        return None
    meta = _read_json_file(folder / "state.json")
    check_fingerprint(meta.get("fingerprint", {}), run.fingerprint, folder)
    try:
        state = TrainState(**meta["state"])
    except (KeyError, TypeError) as err:
        raise GroupTuneError(
            f"{folder / 'state.json'}: not a checkpoint of this version ({err})"
        ) from None
    if state.epoch > run.cfg.training.epochs:
        raise GroupTuneError(
            f"{folder} is at epoch {state.epoch} but training.epochs is "
            f"{run.cfg.training.epochs}; raise epochs or retrain with restart=True"
        )
    load_adapter_weights(run.model, folder / "adapter.safetensors")
    try:
        blob = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        run.optimizer.load_state_dict(blob["optimizer"])
    except Exception as err:
        raise GroupTuneError(f"{folder / 'state.pt'}: corrupted or unreadable ({err})") from None
    torch.set_rng_state(blob["rng"]["cpu"])
    if torch.cuda.is_available() and "cuda" in blob["rng"]:
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    _truncate_lines(run.out / "metrics.jsonl", state.metrics_lines)
    return state


def _truncate_lines(path: Path, n: int) -> None:
    """Keep the first n lines (records written after the checkpoint are written again)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []
    path.write_text("".join(lines[:n]), encoding="utf-8")


# --- the stage ------------------------------------------------------------------------------


def run_fingerprint(cfg, model, tasks: list[Task]) -> dict:
    """What a checkpoint must share with the run that resumes it. training.epochs is left out:
    a run may be extended with more epochs and continues exactly (the lr curve ignores it)."""
    from core.adapters import adapter_fingerprint
    from core.models import model_fingerprint

    return {
        "base_model": model_fingerprint(cfg.model),
        "adapter": adapter_fingerprint(cfg.adapter, model),
        "training": training_fingerprint(cfg.training),
        "data": {
            "max_tokens": cfg.data.max_tokens,
            "tasks": {t.name: t.content_hash() for t in tasks},
        },
    }


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


def _setup(cfg, ws, name: str, task_names: list[str]) -> Run:
    """Load tasks and model, attach a fresh seeded adapter, encode the data, make the optimizer."""
    from core.adapters import attach_adapter
    from core.models import load_model

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


def _finished(out: Path, run: Run, restart: bool) -> dict | None:
    """The stored result if this exact adapter is already complete; refuse a foreign one."""
    path = out / "grouptune.json"
    if restart or not path.exists():
        return None
    done = _read_json_file(path)
    check_fingerprint(done.get("fingerprint", {}), run.fingerprint, out)
    return done if done.get("epochs") == run.cfg.training.epochs else None


def train_adapter(
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
    """Train (or resume, or return the finished) adapter `name` on the union of `task_names`.

    Returns the grouptune.json record: tasks, best_epoch, val_metrics (per task + mean),
    history, accounting, path. `restart=True` deletes an existing folder and starts over.
    `checkpoint_seconds`: between mid-epoch checkpoints (None: `checkpoint_interval()`).
    """
    if checkpoint_seconds is None:
        checkpoint_seconds = checkpoint_interval()
    out = ws.adapter_dir(name)
    if restart:
        shutil.rmtree(out, ignore_errors=True)
    run = _setup(cfg, ws, name, task_names)
    run.progress, run.checkpoint_seconds = progress, checkpoint_seconds
    if offsets is not None:  # what the adapter learns depends on them: part of its identity
        if cfg.training.loss != "choices":
            raise GroupTuneError("training with logit offsets needs training.loss 'choices'")
        run.offsets = offsets
        run.fingerprint["data"]["offsets"] = _digest(offsets)
    done = _finished(out, run, restart)
    if done is not None:
        return done
    twin = None if restart else find_twin(ws, run)
    if twin is not None:
        return _copy_twin(twin, run, ws)
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


def checkpoint_interval() -> float:
    """Seconds between mid-epoch checkpoints: env GROUPTUNE_CHECKPOINT_S (the way to set it
    for a `grouptune train` worker), else CHECKPOINT_SECONDS."""
    raw = os.environ.get("GROUPTUNE_CHECKPOINT_S")
    if raw is None or not raw.strip():
        return CHECKPOINT_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise GroupTuneError(f"GROUPTUNE_CHECKPOINT_S={raw!r}: expected seconds >= 0")
    return seconds


def _digest(offsets: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for split in sorted(offsets):
        for a in offsets[split]:
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def find_twin(ws, run: Run) -> Path | None:
    """A finished adapter elsewhere in the workspace made from the same tasks with the same
    recipe: a group adapter that moved to another index after regrouping, or a subset adapter of
    `grouptune validate-estimate`. Training it again would give the same adapter."""
    want = sorted(t.name for t in run.tasks)
    current = json.loads(json.dumps(run.fingerprint))  # as it reads back from grouptune.json
    for path in sorted(ws.path("adapters").glob("*/grouptune.json")):
        if path.parent == run.out:
            continue
        try:
            rec = read_json(path)
        except (OSError, ValueError):
            continue  # a damaged folder is never a twin
        same = sorted(rec.get("tasks", [])) == want and rec.get("fingerprint") == current
        if same and rec.get("epochs") == run.cfg.training.epochs:
            return path.parent
    return None


def _copy_twin(twin: Path, run: Run, ws) -> dict:
    """Copy a twin's adapter files into run.out; grouptune.json last (it marks completion)."""
    run.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.tmp-", dir=run.out))
    try:
        names = ("adapter_config.json", "adapter_model.safetensors", "metrics.jsonl")
        for fname in names:
            if (twin / fname).exists():
                shutil.copy2(twin / fname, tmp / fname)
        for fname in names:
            if (tmp / fname).exists():
                os.replace(tmp / fname, run.out / fname)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record = _read_json_file(twin / "grouptune.json")
    record.update(name=run.name, path=str(run.out), copied_from=twin.name)
    write_json(run.out / "grouptune.json", record)
    _record_accounting(ws, run.name, record["accounting"])  # what making this adapter cost
    print(
        f"{run.name}: same tasks and recipe as {twin.name}; copied, not retrained", file=sys.stderr
    )
    return record


def _flop_rates(run: Run) -> dict:
    """FLOPs per padded token of a training step and of a validation forward, measured on the
    first batch of epoch 1 (the same batch however the run was resumed)."""
    t, rows = epoch_plan(run.train, run.cfg.training, 0)[0]
    batch, targets, choices = make_batch(run, t, rows)
    train = count_flops(run.model, batch, True, lambda m, b: answer_loss(m, b, targets, choices))
    val = count_flops(run.model, batch, False)
    return {"train": train.per_token, "val": val.per_token, "method": train.method}


def _oom_error(run: Run, err: BaseException) -> GroupTuneError:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    folder = _checkpoint_folder(run.out)
    where = "no checkpoint yet"
    if folder is not None:
        saved = _read_json_file(folder / "state.json")["state"]
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
        "path": str(run.out),
    }
    write_json(run.out / "grouptune.json", record)
    _record_accounting(ws, run.name, accounting)
    return record


def _record_accounting(ws, name: str, entry: dict) -> None:
    if name == "baseline":
        Accounting(ws).record("baseline_training", entry)
    elif name.startswith("group-"):
        Accounting(ws).record("group_training", entry, part=name)
