"""The ensemble's manifest `ensemble.json` (workspace root):
{"version": 1, "base_model": fingerprint, "quantization": "4bit",
 "adapters": {"group-0": "adapters/group-0", ...}   (paths relative to the workspace),
 "groups": [[task, ...], ...], "task_to_group": {task: group index},
 "weights": {task: {adapter: weight}}, "weights_kind": "own" | "fit",
 "fit": {task: {"val_nll_own", "val_nll_fit", ...}}   (only when fitted)}
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from core.artifacts import MANIFEST as DOC
from core.errors import GroupTuneError

MANIFEST = DOC.name


VERSION = 1


SIMPLEX_TOL = 1e-6


def group_adapter_name(i: int) -> str:
    return f"group-{i}"


def own_weights(groups: list[list[str]]) -> dict[str, dict[str, float]]:
    """Default weights: each task puts 1 on its own group's adapter."""
    return {t: {group_adapter_name(i): 1.0} for i, g in enumerate(groups) for t in g}


def make_manifest(
    base_model: dict,
    quantization: str,
    groups: list[list[str]],
    adapters: dict[str, str] | None = None,
    weights: dict | None = None,
    weights_kind: str = "own",
) -> dict:
    """A validated manifest; adapters default to adapters/group-<i>, weights to "own"."""
    groups = [list(g) for g in groups]
    adapters = adapters or {
        group_adapter_name(i): f"adapters/group-{i}" for i in range(len(groups))
    }
    manifest = {
        "version": VERSION,
        "base_model": base_model,
        "quantization": quantization,
        "adapters": dict(adapters),
        "groups": groups,
        "task_to_group": {t: i for i, g in enumerate(groups) for t in g},
        "weights": weights or own_weights(groups),
        "weights_kind": weights_kind,
    }
    return validate_manifest(manifest)


def validate_manifest(manifest: dict, ws=None) -> dict:
    """Check structure, a partition of tasks, weights on the simplex over known adapters and,
    with a workspace, that every adapter folder holds a finished adapter. Returns the manifest."""
    for key in DOC.keys:
        if key not in manifest:
            raise GroupTuneError(f"{MANIFEST}: missing key {key!r}")
    if manifest["weights_kind"] not in ("own", "fit"):
        raise GroupTuneError(f"{MANIFEST}: weights_kind must be 'own' or 'fit'")
    tasks = [t for g in manifest["groups"] for t in g]
    if not tasks or len(set(tasks)) != len(tasks) or not all(manifest["groups"]):
        raise GroupTuneError(f"{MANIFEST}: groups must be non-empty and list each task once")
    if manifest["task_to_group"] != {t: i for i, g in enumerate(manifest["groups"]) for t in g}:
        raise GroupTuneError(f"{MANIFEST}: task_to_group does not match groups")
    for task in tasks:
        _check_simplex(task, manifest["weights"].get(task), manifest["adapters"])
    extra = sorted(set(manifest["weights"]) - set(tasks))
    if extra:
        raise GroupTuneError(f"{MANIFEST}: weights for task(s) {extra} that are in no group")
    if ws is not None:
        for name, rel in manifest["adapters"].items():
            if not (ws.path(rel) / "grouptune.json").exists():
                raise GroupTuneError(
                    f"adapter {name!r} is missing or unfinished in {ws.path(rel)}: run training"
                )
    return manifest


def _check_simplex(task: str, weights: dict | None, adapters: dict) -> None:
    if not weights:
        raise GroupTuneError(f"{MANIFEST}: task {task!r} has no ensemble weights")
    unknown = [a for a in weights if a not in adapters]
    if unknown:
        raise GroupTuneError(f"{MANIFEST}: task {task!r} weights unknown adapter(s) {unknown}")
    values = np.array(list(weights.values()), dtype=float)
    if not np.all(np.isfinite(values)) or values.min() < -SIMPLEX_TOL:
        raise GroupTuneError(f"{MANIFEST}: task {task!r} has negative or non-finite weights")
    if abs(values.sum() - 1.0) > SIMPLEX_TOL:
        raise GroupTuneError(
            f"{MANIFEST}: task {task!r} weights sum to {values.sum():.6g}, not 1 (the simplex)"
        )


def save_manifest(ws, manifest: dict) -> Path:
    return DOC.write(ws, validate_manifest(manifest))


def load_manifest(ws) -> dict:
    """The workspace's manifest, validated (adapters must exist)."""
    manifest = DOC.read(ws)  # not JSON: an error naming the file
    if manifest is None:
        raise GroupTuneError(f"no {MANIFEST} in {ws.root}: train the group adapters first")
    return validate_manifest(manifest, ws)


def weights_digest(folder: Path) -> str:
    """Short sha256 of an adapter's weights file: what its logits (and anything fitted on them)
    depend on."""
    return hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()[:16]


def create_manifest(cfg, ws, groups: list[list[str]]) -> dict:
    """Write the "own"-weights manifest for group adapters group-<i> trained on `groups`.

    An existing manifest for the same groups and the same adapter weights is kept as it is, with
    its fitted weights and boosting rounds (rerunning `grouptune run` redoes none of them)."""
    from core.models.fingerprint import model_fingerprint, same_model

    manifest = make_manifest(model_fingerprint(cfg.model), cfg.model.quantization, groups)
    manifest["digests"] = {a: weights_digest(ws.path(r)) for a, r in manifest["adapters"].items()}
    old = DOC.read(ws)
    same = ("adapters", "groups", "digests")
    if (
        old
        and same_model(old.get("base_model"), manifest["base_model"])
        and all(old.get(k) == manifest[k] for k in same)
    ):
        return old
    save_manifest(ws, manifest)
    return manifest


def group_adapters_ready(ws, groups: list[list[str]]) -> bool:
    """True when every group-<i> folder holds a finished adapter trained on groups[i]."""
    from core.io import read_json

    for i, group in enumerate(groups):
        record = ws.adapter_dir(group_adapter_name(i)) / "grouptune.json"
        if not record.exists() or sorted(read_json(record)["tasks"]) != sorted(group):
            return False
    return True


def sync_manifest(cfg, ws, groups: list[list[str]]) -> dict | None:
    """The manifest, made (or kept) once every group adapter is finished; None before that.

    Group adapters train as separate jobs, possibly at once: each calls this when its own
    adapter is written, under one lock, so the last of them to finish makes the manifest and
    none reads an adapter another job is still writing."""
    from core.locks import artifact_lock, lock_path

    with artifact_lock(lock_path(ws.root, "artifact", "ensemble"), "the ensemble manifest"):
        if not group_adapters_ready(ws, groups):
            return None
        return create_manifest(cfg, ws, groups)


def all_adapters(manifest: dict) -> dict[str, str]:
    """Every adapter the manifest names: the group adapters, then the boosting rounds'."""
    boosts = {b["name"]: b["adapter"] for b in manifest.get("boosting", [])}
    return {**manifest["adapters"], **boosts}


def active_rounds(manifest: dict, cfg) -> list[dict]:
    """The boosting rounds the configured ensemble uses: the first ensemble.boosting rounds
    made on the manifest's weights."""
    made = [
        b for b in manifest.get("boosting", []) if b["weights_kind"] == manifest["weights_kind"]
    ]
    return made[: cfg.ensemble.boosting]
