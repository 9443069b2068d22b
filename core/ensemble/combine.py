"""The ensemble of group adapters and its evaluation beside the single-adapter baseline.

For task t the ensemble's choice logits are Σ_k α_{t,k} · logits_k(x), where logits_k is the
base model with group adapter k. Weights "own" put 1 on t's own group adapter (one forward per
example); weights "fit" are fitted per task on the simplex to minimise val NLL of the mixed
logits, starting from "own" and never ending worse than it on val.
Inference loads the base once, all adapters into one PeftModel (by name), and per task runs only
the adapters with nonzero weight (`set_adapter`).
"""

from __future__ import annotations

import numpy as np

from core.accounting import Accounting, Meter, stage_entry
from core.data.prompts import Encoded, encode_split
from core.ensemble.manifest import (
    MANIFEST,
    create_manifest,
    group_adapter_name,
    own_weights,
)
from core.ensemble.weights import ensure_weights
from core.errors import GroupTuneError
from core.models import prefix
from core.models.flops import count_flops, padded_tokens
from core.models.scoring import model_device
from core.train.eval_status import eval_inputs


def train_groups(cfg, ws, groups: list[list[str]], progress: bool = True, **kw) -> dict:
    """Train (or resume) group-<i> on groups[i] for every group, then write the manifest."""
    from core.train.trainer import train_adapter

    for i, group in enumerate(groups):
        train_adapter(cfg, ws, group_adapter_name(i), list(group), progress, **kw)
    return create_manifest(cfg, ws, groups)


def _inference_entry(model, tokenizer, encs: dict[str, Encoded], active: dict, meter, cfg) -> dict:
    """Accounting of a test pass: FLOPs = per-token rate × padded tokens × active adapters.

    meter: a Meter started before the pass; its elapsed time now is the pass's wall time.
    """
    wall, peak = meter.elapsed(), meter.peak_memory()["peak_memory_bytes"]
    first = next(iter(encs.values()))
    batch = prefix.model_inputs(
        model, first, range(min(8, len(first))), tokenizer.pad_token_id, model_device(model)
    )
    rate = count_flops(model, batch, backward=False)
    bs = cfg.features.batch_size
    flops = sum(rate.per_token * padded_tokens(e.lengths, bs) * active[t] for t, e in encs.items())
    examples = sum(len(e) for e in encs.values())
    return stage_entry(
        flops,
        wall,
        peak,
        sum(int(e.lengths.sum()) for e in encs.values()),
        rate.method + " per token x tokens",
        examples=examples,
        flops_per_example=flops / max(examples, 1),
        adapters_per_example=sum(active[t] * len(e) for t, e in encs.items()) / max(examples, 1),
    )


def forwards(task: str, weights: dict, rounds: list[dict]) -> int:
    """Forward passes per example of `task` at inference: one per adapter with nonzero weight,
    one per boosting round that covers it, and one of the base model for those rounds."""
    boosts = sum(1 for b in rounds if task in b["tasks"] and b["step"] > 0)
    return sum(1 for v in weights[task].values() if v > 0) + boosts + (1 if boosts else 0)


def evaluate_ensemble(cfg, ws, hashes: dict | None = None) -> dict:
    """Test metrics per task (+ mean) of the configured ensemble; writes eval/ensemble.json.

    The ensemble is ensemble.weights' weights (fitted on val first when "fit") plus the
    boosting rounds made on them (core.ensemble.boosting), scored by `Ensemble.scores`, the
    same call `grouptune predict` makes. The file also holds, under "by_weights", the group
    adapters alone with "own" routing and with the manifest's weights, each with its
    forwards per example, per-row correctness for the paired bootstrap (core.stats) and the
    fingerprint of what it was computed from (core.train.eval_status; `hashes`: the tasks'
    content hashes, computed when not given).
    """
    from core.data.sources import select_tasks
    from core.ensemble.predict import Ensemble
    from core.train.evaluation import correct_rows, summarize

    ens = Ensemble.load(ws, cfg)
    tasks = select_tasks(cfg, ens.task_names)
    model, tokenizer = ens.model, ens.tokenizer
    meter = Meter(model_device(model)).start()
    ens.manifest = ensure_weights(cfg, ws, model, tokenizer, tasks, ens.manifest)
    manifest, kind, rounds = ens.manifest, ens.manifest["weights_kind"], ens.rounds
    variants = {
        "own": (own_weights(manifest["groups"]), []),
        kind: (manifest["weights"], []),
        "ensemble": (None, None),  # the Ensemble's own: what predict answers with
    }
    encs = {t.name: encode_split(tokenizer, t, "test", cfg.data.max_tokens) for t in tasks}
    scored, fwd = {}, {}
    for label, (weights, rs) in variants.items():
        scored[label] = {}
        for name, enc in encs.items():
            z = ens.scores(name, ens.logits_of(enc, cache=True), weights, rs)
            scored[label][name] = (z, enc.gold)
        used = (weights, rs) if weights is not None else (manifest["weights"], rounds)
        fwd[label] = float(np.mean([forwards(t, *used) for t in encs]))
    result = summarize(scored["ensemble"])
    doc = {
        "model": "ensemble",
        "split": "test",
        "metrics": result,
        "weights_kind": kind,
        "boosting": rounds,
        "correct": correct_rows(scored["ensemble"]),
        "by_weights": {k: summarize(scored[k]) for k in ("own", kind)},
        "by_weights_correct": {k: correct_rows(scored[k]) for k in ("own", kind)},
        "forwards_per_example": fwd,
        "fingerprint": eval_inputs(ws, cfg, "ensemble", hashes or task_hashes(cfg)),
    }
    ws.write(doc, "eval", "ensemble.json")
    active = {t: forwards(t, manifest["weights"], rounds) for t in encs}
    entry = _inference_entry(model, tokenizer, encs, active, meter, cfg)
    Accounting(ws).record("ensemble_inference", entry)
    return result


def evaluate_baseline(cfg, ws, hashes: dict | None = None) -> dict:
    """Test metrics per task (+ mean) of the single baseline adapter; eval/baseline.json. Its
    scores come from `Ensemble.logits`, as `grouptune predict --explain`'s baseline answers."""
    from core.data.sources import select_tasks
    from core.ensemble.predict import BASELINE, Ensemble
    from core.train.evaluation import correct_rows, summarize

    ens = Ensemble.load(ws, cfg, ensemble=False, baseline=True)
    tasks = select_tasks(cfg, ens.task_names)
    model, tokenizer = ens.model, ens.tokenizer
    meter = Meter(model_device(model)).start()
    encs = {t.name: encode_split(tokenizer, t, "test", cfg.data.max_tokens) for t in tasks}
    scored = {name: (ens.logits(enc, BASELINE), enc.gold) for name, enc in encs.items()}
    result = summarize(scored)
    doc = {"model": "baseline", "split": "test", "metrics": result, "correct": correct_rows(scored)}
    doc["fingerprint"] = eval_inputs(ws, cfg, "baseline", hashes or task_hashes(cfg))
    ws.write(doc, "eval", "baseline.json")
    entry = _inference_entry(model, tokenizer, encs, dict.fromkeys(encs, 1), meter, cfg)
    Accounting(ws).record("baseline_inference", entry)
    return result


def evaluate_trained(cfg, ws, force: bool = False) -> dict:
    """Evaluate what is trained: {"baseline": metrics, "ensemble": metrics}, each if present.
    An evaluation still current (core.train.eval_status, the rule the dashboard shows) is
    reused unless `force`."""
    from core.train.eval_status import eval_status

    trained = {
        "baseline": (ws.adapter_dir("baseline") / "grouptune.json").exists(),
        "ensemble": ws.path(MANIFEST).exists(),
    }
    if not any(trained.values()):
        raise GroupTuneError(
            f"nothing trained in {ws.root}: train the baseline and/or the group adapters first"
        )
    hashes, out = task_hashes(cfg), {}
    for name, evaluate in (("baseline", evaluate_baseline), ("ensemble", evaluate_ensemble)):
        if not trained[name]:
            continue
        if not force and eval_status(ws, cfg, name, hashes) == "fresh":
            out[name] = ws.read("eval", f"{name}.json")["metrics"]
        else:
            out[name] = evaluate(cfg, ws, hashes)
    return out


def task_hashes(cfg) -> dict:
    """task -> content hash of the configured tasks (what evaluations are fingerprinted on)."""
    from core.data.sources import load_tasks
    from core.data.tasks import content_hashes

    return content_hashes(load_tasks(cfg))
