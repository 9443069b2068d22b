"""Train with mixing weights, and compare with the uniform adapter on the test rows.

`train_mixed(cfg, ws, group, weights)` trains the adapter of one group of the chosen grouping
(or, with group None, the single adapter on every task) again with training.mix = weights,
as its own adapter `<name>-mix` beside the uniform one (which stays what the ensemble uses),
and scores both on the test rows of the adapter's tasks with the product's own scoring. It
writes eval/mix-<group|all>.json:
  {"label", "adapter", "tasks", "weights", "uniform": metrics, "weighted": metrics,
   "gain": core.stats.paired_gain of weighted against uniform (points, interval), "correct"}
which the Compare page shows. CLI: `grouptune mix --group I (--weight T=W ... | --suggest)
--train`.
"""

from __future__ import annotations

from core.artifacts import CHOSEN
from core.errors import GroupTuneError


def target(ws, cfg, group: int | None) -> tuple[str, str, list[str]]:
    """(label, adapter name, tasks in training order) of a group or of the single adapter."""
    if group is None:
        return "all", "baseline", list(cfg.task_names)
    chosen = (CHOSEN.read(ws) or {}).get("groups") or []
    if not 0 <= group < len(chosen):
        raise GroupTuneError(f"no group {group}: the chosen grouping has {len(chosen)}")
    return str(group), f"group-{group}", [t for t in cfg.task_names if t in chosen[group]]


def train_mixed(cfg, ws, group: int | None, weights: dict[str, float]) -> dict:
    """The weighted adapter trained (or reused) and compared with the uniform one (module doc)."""
    from core.data.prompts import encode_split
    from core.data.sources import select_tasks
    from core.ensemble.logits import adapter_logits, load_adapters
    from core.stats import paired_gain, paired_sample
    from core.train.evaluation import correct_rows, summarize
    from core.train.trainer import train_adapter

    label, name, tasks = target(ws, cfg, group)
    if not (ws.adapter_dir(name) / "grouptune.json").exists():
        raise GroupTuneError(f"adapter {name} is not trained yet: `grouptune train` first")
    mix = {t: float(weights.get(t, 1.0)) for t in tasks}
    mixed = cfg.model_copy(update={"training": cfg.training.model_copy(update={"mix": mix})})
    train_adapter(mixed, ws, f"{name}-mix", tasks)
    model, tok = load_adapters(cfg, ws, {name: f"adapters/{name}", "mix": f"adapters/{name}-mix"})
    scored = {"uniform": {}, "weighted": {}}
    for task in select_tasks(cfg, tasks):
        enc = encode_split(tok, task, "test", cfg.data.max_tokens)
        scored["uniform"][task.name] = (adapter_logits(model, tok, enc, name, cfg), enc.gold)
        scored["weighted"][task.name] = (adapter_logits(model, tok, enc, "mix", cfg), enc.gold)
    correct = {k: correct_rows(v) for k, v in scored.items()}
    doc = {
        "label": label,
        "adapter": f"{name}-mix",
        "tasks": tasks,
        "weights": mix,
        "uniform": summarize(scored["uniform"]),
        "weighted": summarize(scored["weighted"]),
        "gain": paired_gain([paired_sample(correct["weighted"], correct["uniform"])]),
        "correct": correct,
    }
    ws.write(doc, "eval", f"mix-{label}.json")
    return doc
