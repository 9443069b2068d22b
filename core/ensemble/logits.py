"""The group adapters loaded together into one PeftModel (by name), and each adapter's choice logits on a split, cached on disk by the adapter's weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from core.data.prompts import Encoded
from core.ensemble.manifest import group_adapter_name
from core.errors import GroupTuneError, StaleError
from core.io import read_npy, write_npy
from core.models import prefix
from core.models.flops import count_flops, padded_tokens
from core.models.scoring import choice_logits, model_device


def _check_adapter(path: Path, name: str, base_fp: dict, tasks: list[str] | None = None) -> dict:
    """The adapter's grouptune.json, after checking it is finished and made for this base."""
    from core.models.fingerprint import same_model
    from core.train.run import read_json_file

    if not (path / "grouptune.json").exists() or not (path / "adapter_model.safetensors").exists():
        raise GroupTuneError(f"adapter {name!r} is missing or unfinished in {path}: train it first")
    record = read_json_file(path / "grouptune.json")
    if not same_model(record.get("base_model"), base_fp):
        raise StaleError(
            f"{path} was trained on another base model ({record.get('base_model')}, now "
            f"{base_fp}); retrain it or restore the config it was made with"
        )
    if tasks is not None and sorted(record.get("tasks", [])) != sorted(tasks):
        raise StaleError(
            f"{path} was trained on tasks {record.get('tasks')}, but the ensemble's group is "
            f"{tasks}; retrain the group adapters"
        )
    return record


def load_adapters(cfg, ws, adapters: dict[str, str], groups: list[list[str]] | None = None):
    """The base model loaded ONCE with every adapter in one PeftModel under its own name.

    adapters: name -> folder relative to the workspace. Returns (PeftModel in eval mode,
    tokenizer). A damaged adapter file raises an error naming it.
    """
    from peft import PeftModel

    from core.models.fingerprint import model_fingerprint
    from core.models.loading import load_model

    fp = model_fingerprint(cfg.model)
    paths = {name: ws.path(rel) for name, rel in adapters.items()}
    expected = {group_adapter_name(i): g for i, g in enumerate(groups or [])}
    for name, path in paths.items():
        _check_adapter(path, name, fp, expected.get(name))
    base, tokenizer = load_model(cfg.model)
    model = None
    for name, path in paths.items():
        try:
            if model is None:
                model = PeftModel.from_pretrained(base, str(path), adapter_name=name)
            else:
                model.load_adapter(str(path), adapter_name=name)
        except Exception as err:  # safetensors/peft raise various types for a damaged file
            raise GroupTuneError(
                f"{path / 'adapter_model.safetensors'}: cannot load adapter {name!r} ({err})"
            ) from None
    model.eval()
    model.grouptune_folders = {name: str(path) for name, path in paths.items()}
    prefix.attach(model, cfg, ws)
    return model, tokenizer


def add_adapter(model, ws, name: str, rel: str) -> None:
    """Load one more finished adapter into a model from `load_adapters`."""
    model.load_adapter(str(ws.path(rel)), adapter_name=name)
    model.grouptune_folders[name] = str(ws.path(rel))
    model.eval()


def adapter_logits(model, tokenizer, enc: Encoded, adapter: str, cfg) -> np.ndarray:
    """(n, C) choice logits of `enc` with only `adapter` active."""
    model.set_adapter(adapter)
    desc = f"{enc.split} {enc.task} [{adapter}]"
    return choice_logits(model, tokenizer, enc, cfg.features.batch_size, desc=desc)


def cached_logits(ws, model, tokenizer, enc: Encoded, adapter: str | None, cfg, tally=None):
    """(n, C) choice logits of `enc` with only `adapter` active (None: the base model, every
    adapter off), cached under eval/cache/ by the adapter's weights and the encoded rows (a
    retrained adapter is never reused). `tally`, a list, gets the padded tokens of each pass
    that ran (what the FLOPs of a stage count)."""
    h = hashlib.sha256()
    if adapter is None:
        from core.models.fingerprint import model_fingerprint

        h.update(repr(sorted(model_fingerprint(cfg.model).items())).encode())
    else:
        h.update(_adapter_file(model, adapter).read_bytes())
    answers = enc.choice_ids if enc.answers.single else enc.answers.tokens  # keys kept as they were
    h.update(repr((enc.input_ids, answers, enc.gold.tolist())).encode())
    name = adapter or "base"
    path = ws.path("eval", "cache", name, f"{enc.task}-{enc.split}-{h.hexdigest()[:16]}.npy")
    if path.exists():
        return read_npy(path)
    if adapter is None:
        with model.disable_adapter():
            logits = choice_logits(
                model, tokenizer, enc, cfg.features.batch_size, f"{enc.task} base"
            )
    else:
        logits = adapter_logits(model, tokenizer, enc, adapter, cfg)
    if tally is not None:
        tally.append(padded_tokens(enc.lengths, cfg.features.batch_size))
    write_npy(path, logits)
    return logits


def _adapter_file(model, adapter: str) -> Path:
    return Path(model.grouptune_folders[adapter]) / "adapter_model.safetensors"


def scoring_flops(model, tokenizer, enc: Encoded, padded: int) -> int:
    """FLOPs of scoring `padded` token positions with `model` (a forward, measured on a batch
    of `enc`): what the logit passes of a stage cost."""
    if not padded:
        return 0
    batch = prefix.model_inputs(
        model, enc, range(min(8, len(enc))), tokenizer.pad_token_id, model_device(model)
    )
    return int(count_flops(model, batch, backward=False).per_token * padded)
