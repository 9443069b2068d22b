"""Whether an adapter is done: the one rule the trainer uses to skip a finished adapter and
the dashboard shows (core.views.stages). Torch-free: it reads the adapter's grouptune.json
(or its checkpoint's state.json) and the config, never a model.

An adapter is fresh when its record was made on these tasks (and, when given, their
contents), for the configured number of epochs, with today's training and adapter settings,
base model and token budget. The trainer also compares the full run fingerprint (resolved
target modules and layers) before it reuses one; equal settings on an equal base model give
an equal fingerprint, so the two never disagree on a fresh adapter.
"""

from __future__ import annotations

from core.recipe import training_fingerprint


def adapter_status(ws, cfg, name: str, tasks: list[str], hashes: dict | None = None) -> str:
    """'fresh (best epoch k)', 'stale (why)', 'partial (epoch e/n)' or 'missing'.

    `hashes`: task -> Task.content_hash(); without them the task data is not compared."""
    record = ws.read("adapters", name, "grouptune.json")
    if record is None:
        state = ws.read("adapters", name, "checkpoint", "state.json")
        if state is None:
            return "missing"
        epoch = state.get("state", {}).get("epoch", 0)
        return f"partial (epoch {epoch}/{cfg.training.epochs})"
    why = stale_reason(record, cfg, tasks, hashes)
    return f"stale ({why})" if why else f"fresh (best epoch {record.get('best_epoch')})"


def stale_reason(record: dict, cfg, tasks: list[str], hashes: dict | None = None) -> str | None:
    """Why a finished adapter's record does not match the config, or None when it does."""
    if sorted(record.get("tasks", [])) != sorted(tasks):
        return f"trained on {record.get('tasks')}"
    if record.get("epochs") != cfg.training.epochs:
        return f"trained {record.get('epochs')} epochs, the config asks {cfg.training.epochs}"
    fp, saved = record.get("fingerprint") or {}, record.get("config") or {}
    data = fp.get("data") or {}
    model = {k: getattr(cfg.model, k) for k in ("name", "revision", "quantization")}
    checks = {
        "training settings": (fp.get("training"), training_fingerprint(cfg.training, tasks)),
        "adapter settings": (saved.get("adapter"), cfg.adapter.model_dump(mode="json")),
        "base model": ({k: (saved.get("model") or {}).get(k) for k in model}, model),
        "token budget": (data.get("max_tokens"), cfg.data.max_tokens),
    }
    if hashes is not None:
        checks["task data"] = (data.get("tasks"), {t: hashes.get(t) for t in tasks})
    for what, (old, now) in checks.items():
        if old is not None and old != now:
            return f"the {what} changed"
    return None
