"""A deployable bundle of the trained ensemble: `grouptune export --bundle DIR`.

DIR/
  bundle.json        what predict needs, versioned (format "grouptune-bundle", version 1):
                     the base model (name, folder or Hub id, revision, quantisation, dtype),
                     the token budget, and per task its template, labels and answer words
                     (with their token ids), weights over the group adapters, boosting steps
                     and whether the baseline was trained on it
  adapters/<name>/   the group, boosting and baseline adapters as PEFT folders
                     (adapter_config.json + adapter_model.safetensors)
  predict.py         the loader (core/ensemble/standalone.py): torch, transformers and peft only
  base_model/        the base model's folder, only with --include-model

The bundle is the ensemble `grouptune predict` answers with (core.ensemble.predict): the
manifest's weights and the boosting rounds the config uses.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from core.data.prompts import MIN_TEXT_TOKENS, answer_tokens
from core.data.sources import select_tasks
from core.ensemble.manifest import active_rounds
from core.ensemble.predict import BASELINE, checked_manifest, has_baseline
from core.errors import GroupTuneError
from core.io import read_json, write_json

FORMAT, VERSION = "grouptune-bundle", 1
LOADER = Path(__file__).with_name("standalone.py")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def bundle_spec(cfg, ws, manifest: dict, tokenizer, model_path: str) -> dict:
    """bundle.json's content (see the module docstring)."""
    from core.models.fingerprint import model_fingerprint
    from core.models.registry import MODELS

    rounds = active_rounds(manifest, cfg)
    baseline = read_json(ws.adapter_dir(BASELINE) / "grouptune.json") if has_baseline(ws) else {}
    tasks = {}
    for task in select_tasks(cfg, [t for g in manifest["groups"] for t in g]):
        tasks[task.name] = {
            "template": task.template,
            "labels": dict(task.labels),
            "answer_tokens": [list(t) for t in answer_tokens(tokenizer, task).tokens],
            "weights": manifest["weights"][task.name],
            "boosting": [
                {"adapter": b["name"], "step": b["step"]}
                for b in rounds
                if task.name in b["tasks"] and b["step"] > 0
            ],
            "baseline": task.name in baseline.get("tasks", []),
        }
    fp = model_fingerprint(cfg.model)
    spec = MODELS.get(cfg.model.name)
    model = {
        "name": cfg.model.name,
        "path": model_path,
        "hub_id": spec.hub_id if spec else None,
        "revision": cfg.model.revision,
        "quantization": cfg.model.quantization,
        "dtype": fp["dtype"],
        "fingerprint": fp,
    }
    if spec is not None and spec.package:
        model["note"] = (
            f"GroupTune's {spec.name} is the GGUF file of {spec.package} expanded to float32, "
            f"not {spec.hub_id}'s own weights: load `path` (`grouptune fetch-model {spec.name}` "
            "makes it) or export with --include-model"
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "max_tokens": cfg.data.max_tokens,
        "min_text_tokens": MIN_TEXT_TOKENS,
        "batch_size": cfg.features.batch_size,
        "pad_token_id": tokenizer.pad_token_id,
        "adapters": _adapters(manifest, rounds, baseline),
        "tasks": tasks,
        "weights_kind": manifest["weights_kind"],
        "exported": {"from": str(ws.root), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


def _adapters(manifest: dict, rounds: list[dict], baseline: dict) -> dict[str, str]:
    """Adapter name -> folder in the bundle: the group adapters, the rounds in use, baseline."""
    names = [*manifest["adapters"], *(b["name"] for b in rounds if b["step"] > 0)]
    names += [BASELINE] if baseline else []
    return {name: f"adapters/{name}" for name in names}


def write_bundle(cfg, ws, dest: str | Path, include_model: bool = False) -> dict:
    """Write the bundle to `dest` (replacing an earlier bundle there, never another folder).
    Returns {"bundle": folder, "loader": its predict.py, "adapters": [...], "tasks": [...]}."""
    from core.models.loading import load_tokenizer
    from core.models.provision import fetch_model, publish_folder

    dest = Path(dest).expanduser().resolve()
    if dest.exists() and any(dest.iterdir()) and not (dest / "bundle.json").is_file():
        raise GroupTuneError(f"{dest} exists and is not a bundle: give a new or empty folder")
    manifest = checked_manifest(cfg, ws)
    source = fetch_model(cfg.model.name, progress=False, revision=cfg.model.revision)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        model_path = str(source)
        if include_model:
            shutil.copytree(source, tmp / "base_model", ignore=shutil.ignore_patterns(".*"))
            model_path = "base_model"
        spec = bundle_spec(cfg, ws, manifest, load_tokenizer(cfg.model), model_path)
        for name, rel in spec["adapters"].items():
            (tmp / rel).mkdir(parents=True)
            for f in ADAPTER_FILES:
                shutil.copy2(ws.adapter_dir(name) / f, tmp / rel / f)
        shutil.copy2(LOADER, tmp / "predict.py")
        write_json(tmp / "bundle.json", spec)
        publish_folder(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "bundle": str(dest),
        "loader": str(dest / "predict.py"),
        "adapters": list(spec["adapters"]),
        "tasks": list(spec["tasks"]),
    }
