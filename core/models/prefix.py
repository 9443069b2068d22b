"""Frozen-prefix cache: run only the adapted top layers.

With `adapter.top_layers = L` the layers below the first adapted one carry no adapter, so the
hidden states entering layer n - L depend on the frozen base model and the prompt alone. They
are computed once per task split (a forward stopped at that layer), saved under
<workspace>/cache/prefix/<model key>/, and fed back as `inputs_embeds` while the lower layers
are swapped for pass-throughs. Gradient features, every epoch of every adapter, validation and
test scoring then run L layers instead of n, and every job after the first reuses the files.

Results stay those of the full model up to float rounding: `attach` checks the shortcut against
the full forward on a probe batch and declines it (full path, with a message) when they differ,
as for GPT-2, whose `inputs_embeds` get position embeddings added. Cache files are named by a
hash of the token ids they hold, so changed data never reads stale states.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.data.prompts import Encoded, batches, pad_batch
from core.io import read_npy, write_npy

ATTR = "_grouptune_prefix"  # where the cache hangs on the base model
RTOL = {torch.float32: 1e-4}  # probe tolerance, relative to the largest logit
RTOL_LOW = 3e-2  # bf16 / fp16


class _Captured(Exception):
    """Raised by the hook on the first adapted layer to stop the forward there."""


class PassThrough(nn.Module):
    """Stands in for a skipped decoder layer: returns its hidden states unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class PrefixCache:
    def __init__(self, model, layers: nn.ModuleList, first: int, ws, key: str, batch_size: int):
        self.model, self.layers, self.first = model, layers, first
        self.ws, self.folder, self.batch_size = ws, ws.path("cache", "prefix", key), batch_size
        self.lower = [layers[i] for i in range(first)]
        self.dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self.loaded: dict[tuple[str, str, str], np.ndarray] = {}
        self.spent = {"rows": 0, "tokens": 0, "seconds": 0.0, "flops": 0}

    # --- layers --------------------------------------------------------------------------
    def skip_lower(self) -> None:
        for i in range(self.first):
            self.layers[i] = PassThrough()

    @contextmanager
    def full_model(self):
        """The real lower layers back in place (to compute states), skipped again after."""
        for i, layer in enumerate(self.lower):
            self.layers[i] = layer
        try:
            yield
        finally:
            self.skip_lower()

    def _capture(self, batch: dict) -> torch.Tensor:
        """Hidden states entering the first adapted layer: (rows, width, d)."""

        def hook(module, args, kwargs):
            raise _Captured(args[0] if args else kwargs["hidden_states"])

        handle = self.layers[self.first].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.inference_mode():
                self.model(**batch, use_cache=False, logits_to_keep=1)
        except _Captured as got:
            return got.args[0].detach()
        finally:
            handle.remove()
        raise RuntimeError("the forward never reached the first adapted layer")

    # --- states --------------------------------------------------------------------------
    def states(self, enc: Encoded, pad_id: int) -> np.ndarray:
        """(total tokens, d) states of every row of `enc`, rows concatenated in order."""
        key = (enc.task, enc.split, _ids_hash(enc))
        if key not in self.loaded:
            path = self.folder / f"{enc.task}.{enc.split}.{key[2]}.npy"
            states = self._read(path, enc)
            if states is None:
                self._compute(enc, pad_id, path)
                states = read_npy(path, mmap=True)
            self.loaded[key] = states
        return self.loaded[key]

    def _read(self, path: Path, enc: Encoded) -> np.ndarray | None:
        """The saved states, or None when missing or damaged (then they are computed again)."""
        if not path.exists():
            return None
        shape = (int(enc.lengths.sum()), self.model.config.hidden_size)
        try:
            states = read_npy(path, mmap=True)
        except (OSError, ValueError) as err:
            states, why = None, str(err)
        else:
            why = f"shape {states.shape}, expected {shape}"
        if states is not None and states.shape == shape and states.dtype == _np_dtype(self.dtype):
            return states
        print(f"{path}: unreadable cached states ({why}); computing them again", file=sys.stderr)
        return None

    def _compute(self, enc: Encoded, pad_id: int, path: Path) -> None:
        from core.accounting import Accounting, peak_rss_bytes, stage_entry
        from core.models.flops import count_call_flops
        from core.progress import track

        start, device = time.perf_counter(), _device(self.model)
        offsets = np.concatenate([[0], np.cumsum(enc.lengths)])
        out = np.zeros((int(offsets[-1]), self.model.config.hidden_size), _np_dtype(self.dtype))
        per_token, tokens = 0.0, 0
        was_training = self.model.training
        self.model.eval()
        with self.full_model(), track(len(enc), f"cache {enc.task} {enc.split}", unit="row") as bar:
            for idx in batches(len(enc), self.batch_size, enc.lengths):
                batch = pad_batch([enc.input_ids[i] for i in idx], pad_id, device)
                if not tokens:  # FLOPs per token of the lower layers, counted on the first batch
                    _, count = count_call_flops(
                        self.model, lambda b=batch: self._capture(b), batch, backward=False
                    )
                    per_token = count.per_token
                hidden = _to_numpy(self._capture(batch))
                for j, i in enumerate(idx):
                    n = int(enc.lengths[i])
                    out[offsets[i] : offsets[i + 1]] = hidden[j, hidden.shape[1] - n :]
                tokens += int(batch["attention_mask"].numel())
                bar.update(len(idx))
        self.model.train(was_training)
        write_npy(path, out)
        for old in self.folder.glob(f"{enc.task}.{enc.split}.*.npy"):
            if old != path:
                old.unlink(missing_ok=True)  # states of rows that changed: never read again
        seconds, flops = time.perf_counter() - start, int(per_token * tokens)
        for name, value in (("rows", len(enc)), ("tokens", tokens), ("seconds", seconds)):
            self.spent[name] += value
        self.spent["flops"] += flops
        entry = stage_entry(flops, seconds, peak_rss_bytes(), tokens, "flop_counter per token")
        Accounting(self.ws).record("prefix_cache", entry | {"examples": len(enc)}, part=path.stem)

    def batch(self, enc: Encoded, idx, pad_id: int, device) -> dict:
        """Left-padded inputs_embeds (answer position last), like core.data.prompts.pad_batch."""
        flat = self.states(enc, pad_id)
        offsets = np.concatenate([[0], np.cumsum(enc.lengths)])
        lengths = [int(enc.lengths[i]) for i in idx]
        width = max(lengths)
        hidden = torch.zeros((len(idx), width, flat.shape[1]), dtype=self.dtype)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, (i, n) in enumerate(zip(idx, lengths, strict=True)):
            hidden[j, width - n :] = _from_numpy(flat[offsets[i] : offsets[i + 1]], self.dtype)
            mask[j, width - n :] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        batch = {"inputs_embeds": hidden, "attention_mask": mask, "position_ids": pos}
        return {k: v.to(device) for k, v in batch.items()} | {"use_cache": False}

    def take_spent(self) -> dict:
        """What computing states cost since the last call (rows, tokens, seconds, flops)."""
        spent, self.spent = self.spent, {"rows": 0, "tokens": 0, "seconds": 0.0, "flops": 0}
        return spent


# --- attaching ---------------------------------------------------------------------------------
def attach(model, cfg, ws) -> PrefixCache | None:
    """Switch `model` (base or PEFT) to the cached-prefix path when the config allows it.

    Needs adapter.top_layers below the layer count and adapter.cache_lower_layers (default on).
    Returns the cache, or None when the full path stays (with a message when the probe failed).
    """
    from core.models.adapters import base_model, layer_list, layers_to_transform

    if not cfg.adapter.cache_lower_layers or find(model) is not None:
        return find(model)
    adapted = layers_to_transform(model, cfg.adapter.top_layers)
    found = layer_list(model)
    if not adapted or adapted[0] == 0 or found is None:
        return None
    key = model_key(cfg, adapted[0])
    cache = PrefixCache(model, found[1], adapted[0], ws, key, cfg.features.batch_size)
    problem = _probe(cache)
    if problem:
        print(f"frozen-prefix cache off, running all layers: {problem}", file=sys.stderr)
        return None
    cache.skip_lower()
    setattr(base_model(model), ATTR, cache)
    return cache


def find(model) -> PrefixCache | None:
    from core.models.adapters import base_model

    return getattr(base_model(model), ATTR, None)


def model_inputs(model, enc: Encoded, idx, pad_id: int, device) -> dict:
    """Inputs of the rows `idx` of `enc` for `model`: cached states when the model has a prefix
    cache attached, else left-padded token ids (core.data.prompts.pad_batch). With multi-token
    answer words each row is its sequences (Encoded.sequences), row by row."""
    if not enc.answers.single:
        enc, idx = enc.sequences(), enc.sequence_rows(idx)
    cache = find(model)
    if cache is None:
        return pad_batch([enc.input_ids[i] for i in idx], pad_id, device)
    return cache.batch(enc, idx, pad_id, device)


def model_key(cfg, first: int) -> str:
    """Folder name of one model's states: what decides them is the weights, dtype, device and
    the cut point (the data is in each file's name)."""
    from core.models.device import pick_device
    from core.models.fingerprint import model_fingerprint

    what = {"model": model_fingerprint(cfg.model), "first": first}
    what["device"] = pick_device(cfg.model.device).type
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _probe(cache: PrefixCache) -> str | None:
    """Compare the cached path with the full forward on two probe rows (one left-padded).
    Returns what differs, or None when they agree."""
    model, device = cache.model, _device(cache.model)
    vocab = model.config.vocab_size
    seqs = [[(7 * i + 11) % vocab for i in range(12)], [(5 * i + 3) % vocab for i in range(9)]]
    batch = pad_batch(seqs, 0, device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            full = model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        hidden = cache._capture(batch)
        cache.skip_lower()
        try:
            fast = {"inputs_embeds": hidden, "attention_mask": batch["attention_mask"]}
            fast["position_ids"] = batch["position_ids"]
            with torch.inference_mode():
                got = model(**fast, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        finally:
            for i, layer in enumerate(cache.lower):
                cache.layers[i] = layer
    except Exception as err:  # an architecture the shortcut does not fit: keep the full path
        return f"{type(err).__name__}: {err}"
    finally:
        model.train(was_training)
    diff = float((full - got).abs().max())
    scale = float(full.abs().max()) + 1e-6
    tol = RTOL.get(cache.dtype, RTOL_LOW) * scale
    return None if diff <= tol else f"probe logits differ by {diff:.3g} (tolerance {tol:.3g})"


# --- helpers -----------------------------------------------------------------------------------
def _ids_hash(enc: Encoded) -> str:
    h = hashlib.sha256()
    for ids in enc.input_ids:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def _device(model):
    return next(p.device for p in model.parameters())


def _np_dtype(dtype: torch.dtype):
    # numpy has no bfloat16: 16-bit states are stored as their raw bits (exact, half the disk)
    return np.float32 if dtype == torch.float32 else np.int16


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return t.float().numpy() if t.dtype == torch.float32 else t.view(torch.int16).numpy()


def _from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(np.array(a))  # a copy: memmap slices are read-only
    return t if dtype == torch.float32 else t.view(dtype)
