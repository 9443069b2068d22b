"""Per-example gradient features of every task, computed once into the workspace's stores.

The base model is loaded with a fresh seeded adapter (B = 0) and every train and val row's
features (core.gradients.per_example: the quantities, the hooks and the maths) are written to
its task's feature store (core.gradients.store), batch by batch, so an interrupted run resumes
where it stopped and a finished store is reused while its key matches.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from core.data.prompts import Encoded, encode_split
from core.gradients.per_example import batch_features, feature_dims, prepare_for_extraction
from core.gradients.projection import projector_for
from core.models import prefix


def _resolve_tasks(cfg, tasks):
    from core.data.sources import load_tasks

    if tasks is not None and all(not isinstance(t, str) for t in tasks):
        return list(tasks)
    loaded = load_tasks(cfg)
    if tasks is None:
        return loaded
    by_name = {t.name: t for t in loaded}
    unknown = [t for t in tasks if t not in by_name]
    if unknown:
        from core.errors import ConfigError

        raise ConfigError(f"unknown task(s) {unknown}; the config has {sorted(by_name)}")
    return [by_name[t] for t in tasks]


def _extract_split(
    peft_model,
    store,
    enc: Encoded,
    pad_id: int,
    target: str,
    projector,
    batch_size: int,
    bar,
    on_batch,
) -> int:
    """Compute the pending rows of one split, shortest prompts first, one store write a batch.

    Returns (rows, flops, padded tokens, flop method): the FLOPs are counted on one extra pass
    of the first batch with torch's flop counter and scaled by the padded tokens of all batches.
    """
    from core.models.flops import count_call_flops

    pending = store.pending(enc.split)
    order = pending[np.argsort(enc.lengths[pending], kind="stable")] if len(pending) else pending
    device = next(peft_model.parameters()).device
    per_token, tokens, method = 0.0, 0, "none"
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = prefix.model_inputs(peft_model, enc, idx, pad_id, device)

        def compute(batch=batch, idx=idx):
            return batch_features(
                peft_model, batch, enc.answers, enc.gold[idx], target, enc.split, projector
            )

        if start == 0:  # count on a throwaway pass: the counter may change low-order bits
            _, count = count_call_flops(peft_model, compute, batch, backward=True)
            per_token, method = count.per_token, count.method
        out = compute()
        tokens += int(batch["attention_mask"].numel())
        store.write(enc.split, idx, {n: v.detach().cpu().numpy() for n, v in out.items()})
        bar.update(len(idx), message=f"{enc.task} {enc.split}")
        if on_batch is not None:
            on_batch(enc.task, enc.split, idx)
    return len(order), per_token * tokens, tokens, method


def _open_stores(cfg, ws, todo, tok, peft_model, projector) -> list[tuple]:
    from core.gradients.store import FeatureStore, store_key
    from core.models.adapters import adapter_fingerprint

    adapter = {
        k: v for k, v in adapter_fingerprint(cfg.adapter, peft_model).items() if k != "dropout"
    }
    resolved = {"adapter": adapter, "D": projector.D, "dims": projector.dims}
    resolved["projection"] = {"kind": projector.kind, "k": projector.k}  # what "auto" became
    opened = []
    for task in todo:
        encs = {s: encode_split(tok, task, s, cfg.data.max_tokens) for s in ("train", "val")}
        store = FeatureStore.open(
            ws.features_dir(task.name),
            store_key(cfg, task),
            resolved,
            rows={s: len(e) for s, e in encs.items()},
            C=len(encs["train"].answers),
            k=projector.k,
            gold={s: e.gold for s, e in encs.items()},
        )
        opened.append((task, store, encs))
    return opened


def load_extraction_model(cfg):
    """(peft_model, tokenizer, projector): base model + fresh seeded adapter, ready to extract."""
    from core.models.adapters import attach_adapter
    from core.models.loading import load_model

    model, tok = load_model(cfg.model)
    peft_model = attach_adapter(model, cfg.adapter)
    prepare_for_extraction(peft_model)
    f = cfg.features
    projector = projector_for(f, feature_dims(peft_model))
    return peft_model, tok, projector


def extract_features(cfg, ws, tasks=None, *, on_batch=None) -> dict[str, dict]:
    """Compute (or resume) every task's gradient store; fresh stores are skipped.

    `tasks`: Task objects or task names (default: all of the config's). The model is loaded
    once, and only when some task needs work. `on_batch(task, split, rows)` is called after each
    stored batch. Returns {task: {"status_before", "rows_computed", "seconds"}} plus, for tasks
    computed, "flops" (and its "train_flops" and "val_flops" parts), "tokens" (padded) and
    "flops_method".
    """
    from core.gradients.store import store_status
    from core.locks import artifact_lock, lock_path

    tasks = _resolve_tasks(cfg, tasks)
    before = store_status(ws, cfg, tasks)
    result = {
        t.name: {"status_before": before[t.name], "rows_computed": 0, "seconds": 0.0} for t in tasks
    }
    todo = [t for t in tasks if before[t.name] != "fresh"]
    with contextlib.ExitStack() as held:  # one writer per store; in name order: no deadlock
        for t in sorted(todo, key=lambda t: t.name):
            what = f"the gradient store of {t.name}"
            held.enter_context(artifact_lock(lock_path(ws.root, "features", t.name), what))
        now = store_status(ws, cfg, todo)  # another writer may have finished some meanwhile
        _compute(cfg, ws, [t for t in todo if now[t.name] != "fresh"], result, on_batch)
    return result


def _compute(cfg, ws, todo, result: dict, on_batch) -> None:
    from core.progress import track

    if not todo:
        return
    peft_model, tok, projector = load_extraction_model(cfg)
    prefix.attach(peft_model, cfg, ws)
    opened = _open_stores(cfg, ws, todo, tok, peft_model, projector)
    total = sum(len(store.pending(s)) for _, store, _ in opened for s in ("train", "val"))
    bs, target = cfg.features.batch_size, cfg.features.target
    with track(total, "gradient features", unit="row") as bar:
        for task, store, encs in opened:
            start = time.perf_counter()
            parts = [
                _extract_split(
                    peft_model,
                    store,
                    encs[s],
                    tok.pad_token_id,
                    target,
                    projector,
                    bs,
                    bar,
                    on_batch,
                )
                for s in ("train", "val")
            ]
            seconds = time.perf_counter() - start
            store.finish(seconds)
            result[task.name].update(
                rows_computed=sum(p[0] for p in parts),
                seconds=round(seconds, 3),
                flops=int(sum(p[1] for p in parts)),
                train_flops=int(parts[0][1]),  # the paper counts Step 1 on training rows only
                val_flops=int(parts[1][1]),
                tokens=sum(p[2] for p in parts),
                flops_method="+".join(sorted({p[3] for p in parts if p[0]})) or "none",
            )
