"""A training run: its fixed inputs (`Run`), its state, and its checkpoints: what is saved (adapter weights, optimizer, scheduler, every RNG stream, the data order, metrics so far), when, and how a resumed run continues bit-identically."""

from __future__ import annotations

import operator
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from core import settings
from core.accounting import Accounting
from core.data.prompts import Encoded
from core.data.tasks import Task, content_hashes
from core.errors import GroupTuneError, StaleError
from core.io import read_json, write_json
from core.recipe import (
    epoch_plan,
    training_fingerprint,
)

CHECKPOINT = "checkpoint"


CHECKPOINT_SECONDS = 600.0  # between mid-epoch checkpoints, unless GROUPTUNE_CHECKPOINT_S is set


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
    # boosting (core.ensemble.boosting): per split, per task, (n, C) logits added to the answer words'
    # logits, so the adapter learns what improves on the ensemble those offsets stand for
    offsets: dict[str, list[np.ndarray]] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return len(epoch_plan(self.train, self.cfg.training, 0, self.names))

    @property
    def names(self) -> list[str]:
        """The tasks' names, in training order (training.mix is by name)."""
        return [enc.task for enc in self.train]


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
        swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in(tmp: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_folder(out: Path) -> Path | None:
    """The checkpoint folder, recovering it if a crash fell between the two renames of a swap."""
    final, old = out / CHECKPOINT, out / f".{CHECKPOINT}.old"
    if not final.exists() and old.exists():
        os.replace(old, final)
    return final if (final / "state.json").exists() else None


def read_json_file(path: Path) -> dict:
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
    from core.models.fingerprint import same_model

    for key, label in labels.items():
        same = same_model if key == "base_model" else operator.eq
        if not same(saved.get(key), current.get(key)):
            raise StaleError(
                f"{where} was made with another {label} ({saved.get(key)} vs now "
                f"{current.get(key)}); it is not reused. Delete the folder, pass restart=True "
                "(grouptune train --restart) or use another adapter name."
            )


def load_checkpoint(run: Run) -> TrainState | None:
    """Restore adapter, optimizer and RNG from checkpoint/ (None if there is none)."""
    folder = checkpoint_folder(run.out)
    if folder is None:
        return None
    meta = read_json_file(folder / "state.json")
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
    truncate_lines(run.out / "metrics.jsonl", state.metrics_lines)
    return state


def truncate_lines(path: Path, n: int) -> None:
    """Keep the first n lines (records written after the checkpoint are written again)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []
    path.write_text("".join(lines[:n]), encoding="utf-8")


def run_fingerprint(cfg, model, tasks: list[Task]) -> dict:
    """What a checkpoint must share with the run that resumes it. training.epochs is left out:
    a run may be extended with more epochs and continues exactly (the lr curve ignores it)."""
    from core.models.adapters import adapter_fingerprint
    from core.models.fingerprint import model_fingerprint

    return {
        "base_model": model_fingerprint(cfg.model),
        "adapter": adapter_fingerprint(cfg.adapter, model),
        "training": training_fingerprint(cfg.training, [t.name for t in tasks]),
        "data": {
            "max_tokens": cfg.data.max_tokens,
            "tasks": content_hashes(tasks),
        },
    }


def checkpoint_interval() -> float:
    """Seconds between mid-epoch checkpoints: env GROUPTUNE_CHECKPOINT_S (the way to set it
    for a `grouptune train` worker), else CHECKPOINT_SECONDS."""
    return settings.number("GROUPTUNE_CHECKPOINT_S", CHECKPOINT_SECONDS)


def record_accounting(ws, name: str, entry: dict) -> None:
    if name == "baseline":
        Accounting(ws).record("baseline_training", entry)
    elif name.startswith("group-"):
        Accounting(ws).record("group_training", entry, part=name)
