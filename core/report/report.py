"""The comparison a user presents: zero-shot base, single-QLoRA baseline and group ensemble.

`build_report(ws)` only reads the workspace (eval/*.json, ensemble.json, accounting.json) and
writes report.json:
  tasks, groups, weights_kind,
  by_weights: {"own": mean accuracy, "fit": mean accuracy} of the ensemble per weights kind
              (eval/ensemble.json "by_weights"; null when not there),
  inference_forwards_per_example: eval/ensemble.json's "forwards_per_example" ({"own": x,
              "fit": y, "ensemble": z (with boosting)}: adapter forwards per test example)
              plus "baseline": 1; null when eval/ensemble.json does not say,
  gain: the ensemble's mean accuracy gain over the baseline in points with its 95% paired
        bootstrap interval, core.stats.paired_gain's dict: {points, ci: [low, high], level,
        seeds: 1, rows, replicates, per_task: {task: {points, wins, losses, ties}}}; null (and
        named in "missing") when either file lacks "correct" (per-row results) or the two
        were scored on different tasks or rows,
  gain_parts: where the gain comes from: {"weights_kind", "groups": the group adapters alone
              (the ensemble's weights, no boosting) against the baseline, {points, ci, level,
              rows, seeds}, "boosting_points": what the boosting rounds add on top,
              "boosting_rounds"}; null without per-row results,
  boosting: the boosting rounds the evaluated ensemble used (eval/ensemble.json; before an
            evaluation, ensemble.json's list): {name, adapter, tasks, group, step, method,
            train_error_before, train_error_after, ...} each; [] when there are none,
  accuracy / f1 / ece: {"zero_shot" | "baseline" | "ensemble": {task: v, "mean": v} or null},
  flops: {gradients, gradients_train (its train-row part), estimation, group_training,
          baseline_training, ensemble_weights, boosting, prefix_cache_estimation (train and val
          rows), prefix_cache_shared (all), ensemble_inference_per_example,
          baseline_inference_per_example},
  flops_per_group: {adapter: flops},
  flops_ratio: {"training_paper": (gradients_train + group_training + boosting) / baseline,
                "training_full": (gradients + prefix_cache_estimation + estimation +
                                  group_training + ensemble_weights + boosting) / baseline,
                "inference": ensemble per example / baseline per example},
  wall_seconds, peak_memory_bytes: per stage,
  missing: ["<what>: <which step to run>", ...],
  inputs: digests of the files it was made from (core.report.freshness).
Anything not produced yet is null and named in "missing"; nothing is guessed.
`seeds_gain(workspaces)` is the "gain" of several training seeds' workspaces of one experiment.
"""

from __future__ import annotations

from core.accounting import Accounting
from core.artifacts import MANIFEST, REPORT
from core.errors import GroupTuneError
from core.report.freshness import report_inputs
from core.stats import paired_gain, paired_sample
from core.train.eval_status import MODELS

METRICS = ("accuracy", "f1", "ece")
TRAINING_STAGES = ("gradients", "estimation", "group_training", "baseline_training")
INFERENCE_STAGES = ("ensemble_inference", "baseline_inference")
HINTS = {
    "zero_shot": "eval/zero_shot.json: run `grouptune evaluate` (or `--zero-shot`)",
    "baseline": "eval/baseline.json: train the baseline (`grouptune train`), then "
    "`grouptune evaluate`",
    "ensemble": "eval/ensemble.json: train the group adapters (`grouptune train`), then "
    "`grouptune evaluate`",
    "groups": "ensemble.json: train the group adapters (`grouptune train`)",
    "gradients": "gradient cost: run `grouptune gradients`",
    "estimation": "estimation cost: run `grouptune affinity`",
    "group_training": "group training cost: run `grouptune train`",
    "baseline_training": "baseline training cost: run `grouptune train`",
    "ensemble_inference": "ensemble inference cost: run `grouptune evaluate`",
    "baseline_inference": "baseline inference cost: run `grouptune evaluate`",
    "gain": "gain interval: eval/ensemble.json or eval/baseline.json has no per-row results "
    "(made by an older version): run `grouptune evaluate`",
}


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def _metric_table(evals: dict, metric: str) -> dict:
    """{model: {task: value, "mean": value} or None} for one metric."""
    table = {}
    for model, doc in evals.items():
        if doc is None:
            table[model] = None
            continue
        table[model] = {task: m.get(metric) for task, m in doc["metrics"].items()}
    return table


def _stage_value(acct: dict, stage: str, key: str):
    entry = acct.get(stage)
    return None if entry is None else entry.get(key)


def _tasks(manifest: dict | None, evals: dict) -> list[str]:
    if manifest is not None:
        return [t for g in manifest["groups"] for t in g]
    for doc in evals.values():
        if doc is not None:
            return [t for t in doc["metrics"] if t != "mean"]
    return []


def eval_sample(ensemble: dict, baseline: dict) -> dict:
    """One seed's paired sample {task: (ensemble 0/1 per row, baseline 0/1 per row)} from the
    eval/ensemble.json and eval/baseline.json documents (their "correct")."""
    if "correct" not in ensemble or "correct" not in baseline:
        raise GroupTuneError(HINTS["gain"])
    return paired_sample(ensemble["correct"], baseline["correct"])


def seeds_gain(workspaces) -> dict:
    """The report's "gain" over several workspaces, one per training seed of one experiment
    (same tasks and test rows): seeds and test rows are resampled together (core.stats)."""
    samples = []
    for ws in workspaces:
        ens, base = ws.read("eval", "ensemble.json"), ws.read("eval", "baseline.json")
        try:
            if ens is None or base is None:
                raise GroupTuneError("not evaluated: run `grouptune evaluate`")
            samples.append(eval_sample(ens, base))
        except GroupTuneError as err:
            raise GroupTuneError(f"{ws.root}: {err}") from None
    return paired_gain(samples)


def _gain_parts(evals: dict, gain: dict | None) -> dict | None:
    """Where the gain comes from: the group adapters alone (the ensemble's weights, no
    boosting) against the baseline, with its paired interval, and what boosting adds on top."""
    ens = evals["ensemble"]
    kind = (ens or {}).get("weights_kind")
    if gain is None or kind not in (ens.get("by_weights_correct") or {}):
        return None
    groups = paired_gain(
        [eval_sample({"correct": ens["by_weights_correct"][kind]}, evals["baseline"])]
    )
    return {
        "weights_kind": kind,
        "groups": {k: groups[k] for k in ("points", "ci", "level", "rows", "seeds")},
        "boosting_points": gain["points"] - groups["points"],
        "boosting_rounds": len(ens.get("boosting") or []),
    }


def _gain(evals: dict) -> tuple[dict | None, str | None]:
    """(report "gain", why it is null for "missing", or None)."""
    if evals["ensemble"] is None or evals["baseline"] is None:
        return None, None  # already named in "missing"
    try:
        return paired_gain([eval_sample(evals["ensemble"], evals["baseline"])]), None
    except GroupTuneError as err:  # an older or mismatched evaluation: report the rest
        return None, str(err)


# The ensemble's training FLOPs, counted two ways against the baseline's. The paper's: Step 1
# on the training rows, the group adapters and the boosting rounds. In full: every gradient
# feature (val side and per-choice too), the frozen-prefix cache of the train and val rows, the
# estimator, the group adapters, the val passes that fit the weights, and boosting.
PAPER_COUNT = ("gradients_train", "group_training", "boosting")
FULL_COUNT = (
    "gradients",
    "prefix_cache_estimation",
    "estimation",
    "group_training",
    "ensemble_weights",
    "boosting",
)


def _ensemble_flops(acct: dict) -> dict:
    """The stages the two counts need beside TRAINING_STAGES (0 for optional ones not run)."""
    grads = (acct.get("gradients") or {}).get("parts", {})
    train = [p.get("train_flops") for p in grads.values()]
    prefix = (acct.get("prefix_cache") or {}).get("parts", {})
    return {
        "gradients_train": sum(train) if grads and None not in train else None,
        "prefix_cache_estimation": sum(
            p["flops"] for name, p in prefix.items() if ".test." not in name
        ),
        "ensemble_weights": _stage_value(acct, "ensemble_weights", "flops") or 0,
        "boosting": _stage_value(acct, "boosting", "flops") or 0,
    }


def _boosting(doc: dict | None, manifest: dict | None) -> list[dict]:
    """The boosting rounds the evaluated ensemble used (eval/ensemble.json), else the
    manifest's (made but not evaluated yet)."""
    if doc and "boosting" in doc:
        return doc["boosting"]
    return (manifest or {}).get("boosting") or []


def _sum(flops: dict, keys: tuple) -> int | None:
    values = [flops[k] for k in keys]
    return None if None in values else sum(values)


def _ensemble_extras(doc: dict | None) -> dict:
    """by_weights and inference_forwards_per_example from eval/ensemble.json."""
    by = (doc or {}).get("by_weights")
    forwards = (doc or {}).get("forwards_per_example")
    return {
        "by_weights": {k: m["mean"]["accuracy"] for k, m in by.items()} if by else None,
        "inference_forwards_per_example": {**forwards, "baseline": 1} if forwards else None,
    }


def build_report(ws) -> dict:
    """Assemble report.json from what the workspace holds; missing parts are null and listed."""
    inputs = report_inputs(ws)  # before reading them: a later change makes the report stale
    evals = {m: ws.read("eval", f"{m}.json") for m in MODELS}
    manifest = MANIFEST.read(ws)
    acct = Accounting(ws).read()
    missing = [HINTS[m] for m in MODELS if evals[m] is None]
    if manifest is None:
        missing.append(HINTS["groups"])
    missing += [HINTS[s] for s in TRAINING_STAGES + INFERENCE_STAGES if s not in acct]
    gain, why = _gain(evals)
    missing += [why] if why else []

    flops = {s: _stage_value(acct, s, "flops") for s in TRAINING_STAGES}
    for s in INFERENCE_STAGES:
        flops[f"{s}_per_example"] = _stage_value(acct, s, "flops_per_example")
    # the frozen lower layers, computed once and used by every stage (core.models.prefix); apart from
    # the ratio, which compares the stages as each ran
    flops["prefix_cache_shared"] = _stage_value(acct, "prefix_cache", "flops")
    flops.update(_ensemble_flops(acct))
    parts = (acct.get("group_training") or {}).get("parts", {})
    stages = TRAINING_STAGES + INFERENCE_STAGES
    report = {
        "tasks": _tasks(manifest, evals),
        "groups": manifest["groups"] if manifest else None,
        "weights_kind": manifest.get("weights_kind") if manifest else None,
        **_ensemble_extras(evals["ensemble"]),
        "gain": gain,
        "gain_parts": _gain_parts(evals, gain),
        "boosting": _boosting(evals["ensemble"], manifest),
        **{metric: _metric_table(evals, metric) for metric in METRICS},
        "flops": flops,
        "flops_per_group": {name: p.get("flops") for name, p in parts.items()},
        "flops_ratio": {
            "training_paper": _ratio(_sum(flops, PAPER_COUNT), flops["baseline_training"]),
            "training_full": _ratio(_sum(flops, FULL_COUNT), flops["baseline_training"]),
            "inference": _ratio(
                flops["ensemble_inference_per_example"], flops["baseline_inference_per_example"]
            ),
        },
        "wall_seconds": {
            s: _stage_value(acct, s, "wall_seconds") for s in (*stages, "prefix_cache")
        },
        "peak_memory_bytes": {s: _stage_value(acct, s, "peak_memory_bytes") for s in stages},
        "missing": missing,
        "inputs": inputs,
    }
    REPORT.write(ws, report)
    return report
