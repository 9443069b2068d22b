"""Step 6: the ensemble of group adapters: manifest, per-task weights, and shared inference.

For task t the ensemble's choice logits are Σ_k α_{t,k} · logits_k(x), where logits_k is the
base model with group adapter k. Weights "own" put 1 on t's own group adapter (one forward per
example); weights "fit" are fitted per task on the simplex to minimise val NLL of the mixed
logits, starting from "own" and never ending worse than it on val.

Manifest `ensemble.json` (workspace root):
  {"version": 1, "base_model": fingerprint, "quantization": "4bit",
   "adapters": {"group-0": "adapters/group-0", ...}   (paths relative to the workspace),
   "groups": [[task, ...], ...], "task_to_group": {task: group index},
   "weights": {task: {adapter: weight}}, "weights_kind": "own" | "fit",
   "fit": {task: {"val_nll_own", "val_nll_fit", ...}}   (only when fitted)}
Inference loads the base once, all adapters into one PeftModel (by name), and per task runs only
the adapters with nonzero weight (`set_adapter`).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from core import prefix
from core.errors import GroupTuneError, StaleError
from core.flops import Accounting, Meter, count_flops, padded_tokens, stage_entry
from core.io import read_npy, write_npy
from core.prompts import Encoded, encode_split
from core.scoring import choice_logits, model_device

MANIFEST = "ensemble.json"
VERSION = 1
SIMPLEX_TOL = 1e-6
PRUNE_BELOW = 1e-3  # fitted weights this small are dropped: each costs a forward at inference


def group_adapter_name(i: int) -> str:
    return f"group-{i}"


# --- manifest -------------------------------------------------------------------------------


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
    for key in ("base_model", "adapters", "groups", "task_to_group", "weights", "weights_kind"):
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
    return ws.write(validate_manifest(manifest), MANIFEST)


def load_manifest(ws) -> dict:
    """The workspace's manifest, validated (adapters must exist)."""
    try:
        manifest = ws.read(MANIFEST)
    except ValueError as err:
        raise GroupTuneError(f"{ws.path(MANIFEST)}: not valid JSON ({err})") from None
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
    from core.models import model_fingerprint

    manifest = make_manifest(model_fingerprint(cfg.model), cfg.model.quantization, groups)
    manifest["digests"] = {a: weights_digest(ws.path(r)) for a, r in manifest["adapters"].items()}
    old = ws.read(MANIFEST) if ws.path(MANIFEST).exists() else None
    same = ("base_model", "adapters", "groups", "digests")
    if old and all(old.get(k) == manifest[k] for k in same):
        return old
    save_manifest(ws, manifest)
    return manifest


def train_groups(cfg, ws, groups: list[list[str]], progress: bool = True, **kw) -> dict:
    """Train (or resume) group-<i> on groups[i] for every group, then write the manifest."""
    from core.training import train_adapter

    for i, group in enumerate(groups):
        train_adapter(cfg, ws, group_adapter_name(i), list(group), progress, **kw)
    return create_manifest(cfg, ws, groups)


# --- fitting weights ------------------------------------------------------------------------


def mixed_logits(logits: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Σ_k w_k · logits_k over the adapters with nonzero weight; each (n, C) -> (n, C)."""
    return sum(w * logits[a].astype(np.float64) for a, w in weights.items() if w > 0)


def _nll_and_grad(alpha: np.ndarray, stack: np.ndarray, gold: np.ndarray):
    """Mean NLL of softmax(Σ_k α_k L_k) at gold, and its gradient in α. stack: (K, n, C)."""
    z = np.tensordot(alpha, stack, axes=1)  # (n, C)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    rows = np.arange(len(gold))
    nll = float(np.mean(log_norm - z[rows, gold]))
    resid = np.exp(z - log_norm[:, None])
    resid[rows, gold] -= 1.0  # p - onehot(gold)
    return nll, np.einsum("knc,nc->k", stack, resid) / len(gold)


def fit_weights(
    logits: dict[str, np.ndarray], gold: np.ndarray, start: dict[str, float]
) -> tuple[dict[str, float], dict]:
    """Simplex weights over adapters minimising val NLL of the mixed logits (SLSQP).

    logits: adapter -> (n, C) val choice logits; gold: (n,); start: the "own" weights. Starts
    from `start` and returns it unchanged when the fit does not lower the NLL, so the fitted
    val NLL is never above own. Weights under 1e-3 are pruned (each costs a forward).
    """
    from scipy.optimize import minimize

    names = list(logits)
    stack = np.stack([logits[a] for a in names]).astype(np.float64)
    a0 = np.array([start.get(a, 0.0) for a in names], dtype=float)
    nll0 = _nll_and_grad(a0, stack, gold)[0]
    res = minimize(
        _nll_and_grad,
        a0,
        args=(stack, gold),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * len(names),
        constraints=[
            {"type": "eq", "fun": lambda a: a.sum() - 1.0, "jac": lambda a: np.ones_like(a)}
        ],
    )
    alpha = np.clip(res.x, 0.0, None)
    alpha[alpha < PRUNE_BELOW] = 0.0
    alpha = alpha / alpha.sum() if alpha.sum() > 0 else a0
    nll = _nll_and_grad(alpha, stack, gold)[0]
    if not math.isfinite(nll) or nll > nll0:
        alpha, nll = a0, nll0
    weights = {a: float(w) for a, w in zip(names, alpha, strict=True) if w > 0}
    return weights, {"val_nll_own": nll0, "val_nll_fit": nll, "converged": bool(res.success)}


# --- inference ------------------------------------------------------------------------------


def _check_adapter(path: Path, name: str, base_fp: dict, tasks: list[str] | None = None) -> dict:
    """The adapter's grouptune.json, after checking it is finished and made for this base."""
    from core.training import _read_json_file

    if not (path / "grouptune.json").exists() or not (path / "adapter_model.safetensors").exists():
        raise GroupTuneError(f"adapter {name!r} is missing or unfinished in {path}: train it first")
    record = _read_json_file(path / "grouptune.json")
    if record.get("base_model") != base_fp:
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

    from core.models import load_model, model_fingerprint

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
        from core.models import model_fingerprint

        h.update(repr(sorted(model_fingerprint(cfg.model).items())).encode())
    else:
        h.update(_adapter_file(model, adapter).read_bytes())
    h.update(repr((enc.input_ids, enc.choice_ids, enc.gold.tolist())).encode())
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


def fit_all_weights(ws, model, tokenizer, tasks, manifest: dict, cfg) -> tuple[dict, dict]:
    """Per task, `fit_weights` on cached val logits of every adapter. Returns (weights, info);
    the val passes it ran are counted in accounting.json's "ensemble_weights" stage."""
    own = own_weights(manifest["groups"])
    weights, info, tally = {}, {}, []
    meter = Meter(model_device(model)).start()
    for task in tasks:
        enc = encode_split(tokenizer, task, "val", cfg.data.max_tokens)
        logits = {
            a: cached_logits(ws, model, tokenizer, enc, a, cfg, tally) for a in manifest["adapters"]
        }
        weights[task.name], info[task.name] = fit_weights(logits, enc.gold, own[task.name])
    flops = scoring_flops(model, tokenizer, enc, sum(tally))
    entry = stage_entry(
        flops, meter.elapsed(), meter.peak_memory()["peak_memory_bytes"], 0, "val passes"
    )
    Accounting(ws).record("ensemble_weights", entry)
    return weights, info


def scoring_flops(model, tokenizer, enc: Encoded, padded: int) -> int:
    """FLOPs of scoring `padded` token positions with `model` (a forward, measured on a batch
    of `enc`): what the logit passes of a stage cost."""
    if not padded:
        return 0
    batch = prefix.model_inputs(
        model, enc, range(min(8, len(enc))), tokenizer.pad_token_id, model_device(model)
    )
    return int(count_flops(model, batch, backward=False).per_token * padded)


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


def all_adapters(manifest: dict) -> dict[str, str]:
    """Every adapter the manifest names: the group adapters, then the boosting rounds'."""
    boosts = {b["name"]: b["adapter"] for b in manifest.get("boosting", [])}
    return {**manifest["adapters"], **boosts}


def ensure_weights(cfg, ws, model, tokenizer, tasks, manifest: dict) -> dict:
    """The manifest with ensemble.weights' kind of weights, fitted (on cached val logits) and
    saved if it holds the other kind. Boosting rounds made on other weights are dropped."""
    kind = cfg.ensemble.weights
    if manifest["weights_kind"] == kind:
        return manifest
    new = {k: v for k, v in manifest.items() if k not in ("fit", "boosting")}
    if kind == "fit":
        new["weights"], new["fit"] = fit_all_weights(ws, model, tokenizer, tasks, manifest, cfg)
    else:
        new["weights"] = own_weights(manifest["groups"])
    new["weights_kind"] = kind
    save_manifest(ws, new)
    return new


def active_rounds(manifest: dict, cfg) -> list[dict]:
    """The boosting rounds the configured ensemble uses: the first ensemble.boosting rounds
    made on the manifest's weights."""
    made = [
        b for b in manifest.get("boosting", []) if b["weights_kind"] == manifest["weights_kind"]
    ]
    return made[: cfg.ensemble.boosting]


def compose(logits_of, task: str, weights: dict, rounds: list[dict]) -> np.ndarray:
    """The ensemble's (n, C) choice logits for `task`: Σ_k α_k L_k + Σ_r η_r (L_r − L_0), the
    weighted group adapters plus each boosting round that covers the task, added as its change
    to the base model's logits L_0. logits_of(adapter name, or None for the base) -> (n, C)."""
    z = mixed_logits({a: logits_of(a) for a in weights[task]}, weights[task])
    for b in rounds:
        if task in b["tasks"] and b["step"] > 0:
            z = z + b["step"] * (logits_of(b["name"]).astype(np.float64) - logits_of(None))
    return z


def forwards(task: str, weights: dict, rounds: list[dict]) -> int:
    """Forward passes per example of `task` at inference: one per adapter with nonzero weight,
    one per boosting round that covers it, and one of the base model for those rounds."""
    boosts = sum(1 for b in rounds if task in b["tasks"] and b["step"] > 0)
    return sum(1 for v in weights[task].values() if v > 0) + boosts + (1 if boosts else 0)


def evaluate_ensemble(cfg, ws) -> dict:
    """Test metrics per task (+ mean) of the configured ensemble; writes eval/ensemble.json.

    The ensemble is ensemble.weights' weights (fitted on val first when "fit") plus the
    boosting rounds made on them (core.boosting). The file also holds, under "by_weights", the
    group adapters alone with "own" routing and with the manifest's weights, each with its
    forwards per example, and per-row correctness for the paired bootstrap (core.stats).
    """
    from core.evaluation import correct_rows, summarize
    from core.models import model_fingerprint
    from core.training import select_tasks

    manifest = load_manifest(ws)
    if manifest["base_model"] != model_fingerprint(cfg.model):
        raise StaleError(
            f"{ws.path(MANIFEST)} was made for another base model ({manifest['base_model']}); "
            "retrain the group adapters or restore the config they were made with"
        )
    tasks = select_tasks(cfg, [t for g in manifest["groups"] for t in g])
    model, tokenizer = load_adapters(cfg, ws, all_adapters(manifest), manifest["groups"])
    meter = Meter(model_device(model)).start()
    manifest = ensure_weights(cfg, ws, model, tokenizer, tasks, manifest)
    kind, rounds = manifest["weights_kind"], active_rounds(manifest, cfg)
    variants = {
        "own": (own_weights(manifest["groups"]), []),
        kind: (manifest["weights"], []),
        "ensemble": (manifest["weights"], rounds),
    }
    encs = {t.name: encode_split(tokenizer, t, "test", cfg.data.max_tokens) for t in tasks}
    scored, fwd = {}, {}
    for label, (weights, rs) in variants.items():
        scored[label] = {}
        for name, enc in encs.items():
            z = compose(
                lambda a, enc=enc: cached_logits(ws, model, tokenizer, enc, a, cfg),
                name,
                weights,
                rs,
            )
            scored[label][name] = (z, enc.gold)
        fwd[label] = float(np.mean([forwards(t, weights, rs) for t in encs]))
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
    }
    ws.write(doc, "eval", "ensemble.json")
    active = {t: forwards(t, manifest["weights"], rounds) for t in encs}
    entry = _inference_entry(model, tokenizer, encs, active, meter, cfg)
    Accounting(ws).record("ensemble_inference", entry)
    return result


def evaluate_baseline(cfg, ws) -> dict:
    """Test metrics per task (+ mean) of the single baseline adapter; eval/baseline.json."""
    from core.evaluation import correct_rows, summarize, task_logits
    from core.training import _read_json_file, select_tasks

    path = ws.adapter_dir("baseline")
    if not (path / "grouptune.json").exists():
        raise GroupTuneError(f"no finished baseline adapter in {path}: train it first")
    record = _read_json_file(path / "grouptune.json")
    tasks = select_tasks(cfg, record["tasks"])
    model, tokenizer = load_adapters(cfg, ws, {"baseline": "adapters/baseline"})
    meter = Meter(model_device(model)).start()
    scored = task_logits(model, tokenizer, tasks, cfg, split="test")
    result = summarize(scored)
    doc = {"model": "baseline", "split": "test", "metrics": result, "correct": correct_rows(scored)}
    ws.write(doc, "eval", "baseline.json")
    encs = {t.name: encode_split(tokenizer, t, "test", cfg.data.max_tokens) for t in tasks}
    entry = _inference_entry(model, tokenizer, encs, dict.fromkeys(encs, 1), meter, cfg)
    Accounting(ws).record("baseline_inference", entry)
    return result


def evaluate_trained(cfg, ws) -> dict:
    """Evaluate what is trained: {"baseline": metrics, "ensemble": metrics}, each if present."""
    out = {}
    if (ws.adapter_dir("baseline") / "grouptune.json").exists():
        out["baseline"] = evaluate_baseline(cfg, ws)
    if ws.path(MANIFEST).exists():
        out["ensemble"] = evaluate_ensemble(cfg, ws)
    if not out:
        raise GroupTuneError(
            f"nothing trained in {ws.root}: train the baseline and/or the group adapters first"
        )
    return out
