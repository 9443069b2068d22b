"""The gradient store: per-task feature arrays on disk, keyed, resumable, memory-mapped.

One folder per task (`ws.features_dir(task)`):
  meta.json        format version, the key, resolved adapter/projection facts, row counts,
                   `complete` (true only once every row of both splits is done)
  train_h.npy      (n_train,)        log-odds target h at the base model
  train_g.npy      (n_train, k)      projected gradient Πᵀ ∂h/∂B
  train_z.npy      (n_train, C)      answer-word logits       } target "choices" with C > 2
  train_G.npy      (n_train, C, k)   their projected gradients } (`per_choice_train`)
  train_gold.npy   (n_train,)        gold choice index
  val_z.npy        (n_val, C)        answer-word logits
  val_lse.npy      (n_val,)          full-vocabulary logsumexp
  val_h.npy        (n_val,)          h for the configured target
  val_G.npy        (n_val, C, k)     projected gradient of every answer-word logit
  val_Glse.npy     (n_val, k)        projected gradient of lse (target "vocab" only)
  val_gold.npy     (n_val,)
  train_done.npy, val_done.npy (n,) bool: rows finished, flushed after their data

Arrays are .npy files opened with numpy's open_memmap, so stores of 1e5+ rows and 100s of
tasks never have to fit in memory. The key (model, adapter, template, task data, max_tokens,
target, projection kind/seed/k) is compared on reopen: any difference means the store is
rebuilt from scratch, never reused. The part of the key that needs the loaded model (resolved
adapter layers, D) is checked when features are extracted; `store_status` uses the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from core.errors import GroupTuneError, StaleError
from core.io import read_json, write_json

log = logging.getLogger("grouptune.store")

FORMAT_VERSION = 2  # 2: per-choice train logits and gradients for tasks of 3+ answer words
SPLITS = ("train", "val")
META = "meta.json"


def per_choice_train(C: int, target: str) -> bool:
    """Whether train rows also store every answer word's logit and gradient. With two answer
    words h = z_gold − z_other is itself linear in the logits, so h and g say everything; with
    more, the replay linearises the logits and keeps the softmax exact, which follows real
    fine-tuning far better (bench/results/agreement-claims.json)."""
    return target == "choices" and C > 2


def split_arrays(split: str, n: int, C: int, k: int, target: str) -> dict[str, tuple]:
    """Name -> (shape, dtype) of the feature arrays of one split (gold and done included)."""
    if split == "train":
        arrays = {"h": ((n,), "f4"), "g": ((n, k), "f4")}
        if per_choice_train(C, target):
            arrays |= {"z": ((n, C), "f4"), "G": ((n, C, k), "f4")}
    else:
        arrays = {
            "z": ((n, C), "f4"),
            "lse": ((n,), "f4"),
            "h": ((n,), "f4"),
            "G": ((n, C, k), "f4"),
        }
        if target == "vocab":
            arrays["Glse"] = ((n, k), "f4")
    return {**arrays, "gold": ((n,), "i8"), "done": ((n,), "?")}


def task_data_hash(task) -> str:
    """sha256 of what changes a prompt or a gold label in the train and val splits."""
    h = hashlib.sha256(json.dumps([task.template, task.labels], sort_keys=True).encode())
    for split in SPLITS:
        h.update(split.encode())
        for row in task.rows(split):
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def store_key(cfg, task) -> dict:
    """The store key, computable without loading the model or torch (what `store_status`
    compares, for the engine and the dashboard alike)."""
    from core.models.fingerprint import model_fingerprint

    model = model_fingerprint(cfg.model)
    a = cfg.adapter
    return {
        "model": model,
        # dropout is off while extracting, so it does not change the features
        "adapter": {
            "r": a.r,
            "alpha": float(a.alpha),
            "seed": a.seed,
            "target_modules": a.target_modules,
            "top_layers": a.top_layers,
        },
        "task": {
            "name": task.name,
            "template": task.template,
            "labels": task.labels,
            "data_hash": task_data_hash(task),
        },
        "max_tokens": cfg.data.max_tokens,
        "target": cfg.features.target,
        "projection": {
            "kind": cfg.features.projection,
            "seed": cfg.features.seed,
            "k": None if cfg.features.projection == "identity" else cfg.features.k,
        },
    }


def key_difference(old, new, path: str = "") -> str | None:
    """First difference between two keys as 'dotted.path: old -> new', or None if equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for name in list(old) + [n for n in new if n not in old]:
            diff = key_difference(old.get(name), new.get(name), f"{path}.{name}" if path else name)
            if diff:
                return diff
        return None
    if old != new:
        return f"{path or 'key'}: {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}"
    return None


def _as_today(old: dict | None, key: dict) -> dict | None:
    """A stored key read as made on today's model when it names the same weights: stores made
    before provisioned models were fingerprinted by name (core.models.fingerprint.same_model)
    are not recomputed for that alone."""
    from core.models.fingerprint import same_model

    if isinstance(old, dict) and same_model(old.get("model"), key["model"]):
        return {**old, "model": key["model"]}
    return old


def _read_meta(folder: Path) -> dict | None:
    try:
        meta = read_json(folder / META)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def store_metas(ws, names) -> dict[str, dict]:
    """{task: its feature store's meta.json}, {} for a task with no readable store."""
    return {n: _read_meta(ws.features_dir(n)) or {} for n in names}


def _done_count(folder: Path, split: str) -> int | None:
    try:
        return int(np.load(folder / f"{split}_done.npy", mmap_mode="r").sum())
    except (OSError, ValueError):
        return None


def folder_status(folder: Path, key: dict) -> str:
    """'fresh' | 'stale (reason)' | 'partial (x/n)' | 'missing' for one task's store."""
    meta = _read_meta(folder)
    if meta is None:
        return "missing"
    if meta.get("format") != FORMAT_VERSION:
        return f"stale (store format {meta.get('format')} -> {FORMAT_VERSION})"
    diff = key_difference(_as_today(meta.get("key"), key), key)
    if diff:
        return f"stale ({diff})"
    rows = meta.get("rows", {})
    done = [_done_count(folder, s) for s in SPLITS]
    if any(d is None for d in done):
        return "stale (done mask missing or unreadable)"
    total = sum(int(rows.get(s, 0)) for s in SPLITS)
    if meta.get("complete") and sum(done) == total:
        return "fresh"
    return f"partial ({sum(done)}/{total})"


def store_status(ws, cfg, tasks=None) -> dict[str, str]:
    """Status of every task's store: 'fresh', 'stale (reason)', 'partial (x/n)' or 'missing'.

    `tasks` are loaded Task objects (default: the config's, via core.data.sources.load_tasks).
    """
    if tasks is None:
        from core.data.sources import load_tasks

        tasks = load_tasks(cfg)
    return {t.name: folder_status(ws.features_dir(t.name), store_key(cfg, t)) for t in tasks}


class FeatureStore:
    """One task's store opened for writing. Use `FeatureStore.open`; then `write`, `finish`."""

    def __init__(self, folder: Path, meta: dict, arrays: dict[str, dict[str, np.ndarray]]):
        self.folder, self.meta, self.arrays = folder, meta, arrays

    @classmethod
    def open(
        cls,
        folder,
        key: dict,
        resolved: dict,
        rows: dict[str, int],
        C: int,
        k: int,
        gold: dict[str, np.ndarray],
    ) -> FeatureStore:
        """Reopen a matching store (to resume) or build an empty one, logging why it rebuilt.

        `resolved` holds the facts known only with the model loaded (adapter layers, D); `rows`
        maps split -> row count; `gold` split -> (n,) gold indices.
        """
        folder = Path(folder)
        meta = {
            "format": FORMAT_VERSION,
            "key": key,
            "resolved": resolved,
            "C": int(C),
            "k": int(k),
            "rows": {s: int(rows[s]) for s in SPLITS},
            "complete": False,
        }
        reason = cls._mismatch(folder, meta)
        if reason is None:
            try:
                return cls(folder, _read_meta(folder), cls._map(folder, meta, "r+"))
            except (OSError, ValueError) as err:
                reason = f"arrays unreadable ({err})"
        if reason != "missing":
            log.warning("features of task %s are recomputed: %s", key["task"]["name"], reason)
        return cls._create(folder, meta, gold)

    @staticmethod
    def _mismatch(folder: Path, meta: dict) -> str | None:
        old = _read_meta(folder)
        if old is None:
            return "missing"
        old["key"] = _as_today(old.get("key"), meta["key"])
        for part in ("format", "key", "resolved", "C", "k", "rows"):
            diff = key_difference(old.get(part), meta[part], part)
            if diff:
                return diff
        return None

    @staticmethod
    def _map(folder: Path, meta: dict, mode: str) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        target = meta["key"]["target"]
        for split in SPLITS:
            specs = split_arrays(split, meta["rows"][split], meta["C"], meta["k"], target)
            out[split] = {}
            for name, (shape, dtype) in specs.items():
                path = folder / f"{split}_{name}.npy"
                if mode == "w+":
                    out[split][name] = open_memmap(path, mode="w+", dtype=dtype, shape=shape)
                    continue
                arr = open_memmap(path, mode=mode)
                if arr.shape != shape or arr.dtype != np.dtype(dtype):
                    raise ValueError(f"{path.name} has shape {arr.shape}, expected {shape}")
                out[split][name] = arr
        return out

    @classmethod
    def _create(cls, folder: Path, meta: dict, gold: dict[str, np.ndarray]) -> FeatureStore:
        # the old meta goes first, so a half-rebuilt folder is never taken for the old store
        (folder / META).unlink(missing_ok=True)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        arrays = cls._map(folder, meta, "w+")
        for split in SPLITS:
            arrays[split]["gold"][:] = gold[split]
            for arr in arrays[split].values():
                arr.flush()
        write_json(folder / META, {**meta, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return cls(folder, _read_meta(folder), arrays)

    @property
    def task(self) -> str:
        return self.meta["key"]["task"]["name"]

    def pending(self, split: str) -> np.ndarray:
        """Row indices of `split` not finished yet, ascending."""
        return np.flatnonzero(~np.asarray(self.arrays[split]["done"]))

    def write(self, split: str, rows: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Store one batch of rows and mark them done (data flushed before the done mask).

        Raises GroupTuneError naming the task, split and row when a value is NaN or inf.
        """
        arrays = self.arrays[split]
        for name, value in values.items():
            bad = ~np.isfinite(value.reshape(len(rows), -1)).all(axis=1)
            if bad.any():
                row = int(rows[np.flatnonzero(bad)[0]])
                raise GroupTuneError(
                    f"task {self.task}, split {split}, row index {row} (0-based): the feature "
                    f"{name!r} is NaN or infinite; the model produced non-finite values for this "
                    "prompt (try model.dtype float32 or a shorter data.max_tokens)"
                )
        for name, value in values.items():
            arrays[name][rows] = value
            arrays[name].flush()
        arrays["done"][rows] = True
        arrays["done"].flush()

    def finish(self, seconds: float | None = None) -> bool:
        """Mark the store complete if every row is done (meta.json rewritten atomically)."""
        done = {s: int(np.asarray(self.arrays[s]["done"]).sum()) for s in SPLITS}
        complete = all(done[s] == self.meta["rows"][s] for s in SPLITS)
        self.meta = {**self.meta, "complete": complete, "done": done}
        if seconds is not None:
            self.meta["seconds"] = round(self.meta.get("seconds", 0.0) + seconds, 3)
        if complete:
            self.meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(self.folder / META, self.meta)
        return complete


@dataclass
class TaskFeatures:
    """One task's stored features (arrays may be read-only memmaps). Shapes as in the module doc."""

    train_h: np.ndarray
    train_g: np.ndarray
    train_gold: np.ndarray
    val_z: np.ndarray
    val_lse: np.ndarray
    val_h: np.ndarray
    val_G: np.ndarray
    val_Glse: np.ndarray | None
    val_gold: np.ndarray
    target: str
    k: int
    meta: dict
    train_z: np.ndarray | None = None  # (n, C), per_choice_train tasks only
    train_G: np.ndarray | None = None  # (n, C, k)


def load_features(ws, task_name: str, cfg=None, task=None) -> TaskFeatures:
    """Open a complete store read-only (memory-mapped).

    Raises StaleError when it is missing or partial, or, given `cfg` and the loaded `task`,
    when it was made with other settings.
    """
    folder = ws.features_dir(task_name)
    meta = _read_meta(folder)
    hint = "run `grouptune gradients` to compute them"
    if meta is None:
        raise StaleError(f"no gradient features for task {task_name!r}; {hint}")
    if cfg is not None and task is not None:
        status = folder_status(folder, store_key(cfg, task))
        if status != "fresh":
            raise StaleError(f"gradient features of task {task_name!r} are {status}; {hint}")
    if not meta.get("complete"):
        raise StaleError(f"gradient features of task {task_name!r} are incomplete; {hint}")

    def arr(name):
        return np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    vocab = meta["key"]["target"] == "vocab"
    per_choice = per_choice_train(int(meta["C"]), meta["key"]["target"])
    return TaskFeatures(
        train_h=arr("train_h"),
        train_g=arr("train_g"),
        train_gold=arr("train_gold"),
        val_z=arr("val_z"),
        val_lse=arr("val_lse"),
        val_h=arr("val_h"),
        val_G=arr("val_G"),
        val_Glse=arr("val_Glse") if vocab else None,
        val_gold=arr("val_gold"),
        target=meta["key"]["target"],
        k=int(meta["k"]),
        meta=meta,
        train_z=arr("train_z") if per_choice else None,
        train_G=arr("train_G") if per_choice else None,
    )
