"""The comparison as tables and sentences, read from report.json: metrics per task, costs, the gain with its interval, weights and boosting, accuracy against FLOPs."""

from __future__ import annotations

import pandas as pd

from core.artifacts import REPORT
from core.workspace import Workspace

MODELS = ("ensemble", "baseline", "zero_shot")
MODEL_LABELS = {
    "ensemble": "Group ensemble",
    "baseline": "Single QLoRA adapter",
    "zero_shot": "Zero-shot base model",
}
METRIC_LABELS = {"accuracy": "Accuracy", "f1": "Macro F1", "ece": "Calibration error (ECE)"}


def load_report(ws: Workspace) -> dict | None:
    return REPORT.read(ws)


def metric_table(report: dict, metric: str = "accuracy") -> pd.DataFrame:
    """Task x model table of one metric (rows: tasks, then "mean"); None where not evaluated."""
    tasks = [*report.get("tasks", []), "mean"]
    values = report.get(metric) or {}
    data = {MODEL_LABELS[m]: [(values.get(m) or {}).get(t) for t in tasks] for m in MODELS}
    return pd.DataFrame(data, index=pd.Index(tasks, name="task"))


def _sum(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else float(sum(values))


def _max(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(max(values)) if values else None


COST_COLUMNS = [
    "training FLOPs",
    "inference FLOPs / example",
    "training wall s",
    "inference wall s",
    "peak memory GiB",
]


def cost_table(report: dict, metrics: bool = True) -> pd.DataFrame:
    """Per model: mean accuracy/F1/ECE (unless `metrics` is False), training FLOPs (the
    ensemble's include gradient features and estimation), inference FLOPs per example, wall
    times, peak memory."""
    flops, wall = report.get("flops") or {}, report.get("wall_seconds") or {}
    mem = report.get("peak_memory_bytes") or {}
    ens_train = ("gradients", "estimation", "group_training")
    stages = {
        "ensemble": (ens_train, "ensemble_inference"),
        "baseline": (("baseline_training",), "baseline_inference"),
    }
    rows = []
    for m in MODELS:
        mean = {k: ((report.get(k) or {}).get(m) or {}).get("mean") for k in METRIC_LABELS}
        row = {"model": MODEL_LABELS[m], **{METRIC_LABELS[k]: v for k, v in mean.items()}}
        if m in stages:
            train, infer = stages[m]
            gib = _max(mem.get(s) for s in (*train, infer))
            row.update(
                {
                    "training FLOPs": _sum(flops.get(s) for s in train),
                    "inference FLOPs / example": flops.get(f"{infer}_per_example"),
                    "training wall s": _sum(wall.get(s) for s in train),
                    "inference wall s": wall.get(infer),
                    "peak memory GiB": gib / 2**30 if gib is not None else None,
                }
            )
        else:  # the base model is not trained; its inference cost is not measured
            row.update({"training FLOPs": 0.0, "training wall s": 0.0})
        rows.append(row)
    table = pd.DataFrame(rows).set_index("model")
    table = table.reindex(columns=[*METRIC_LABELS.values(), *COST_COLUMNS])
    return table if metrics else table[COST_COLUMNS]


def gain_text(gain: dict | None) -> str | None:
    """report.json's "gain" in words: "+1.3 points [-0.8, +3.4], 1 seed, 600 paired test rows"."""
    if not gain:
        return None
    low, high = gain["ci"]
    seeds = "1 seed" if gain["seeds"] == 1 else f"{gain['seeds']} seeds"
    each = "" if gain["seeds"] == 1 else " each"
    return (
        f"{gain['points']:+.1f} points [{low:+.1f}, {high:+.1f}], {seeds}, "
        f"{gain['rows']} paired test rows{each}"
    )


def gain_verdict(gain: dict | None) -> str | None:
    """Whether the interval tells the gain from noise."""
    if not gain:
        return None
    low, high = gain["ci"]
    level = f"{100 * gain.get('level', 0.95):.0f}%"
    if low > 0:
        return f"The {level} interval is above 0: the ensemble is better beyond this noise."
    if high < 0:
        return f"The {level} interval is below 0: the single adapter is better beyond this noise."
    return f"The {level} interval includes 0: this difference cannot be told from noise."


def gain_parts_text(parts: dict | None, m: int | None) -> str | None:
    """Where the ensemble's gain comes from, in words (report.json "gain_parts")."""
    if not parts:
        return None
    g = parts["groups"]
    low, high = g["ci"]
    text = (
        f"the {m or '?'} group adapter(s) alone ({parts['weights_kind']} weights, no boosting) "
        f"{g['points']:+.1f} points [{low:+.1f}, {high:+.1f}]; "
        f"{parts['boosting_rounds']} boosting round(s) add {parts['boosting_points']:+.1f}"
    )
    if m == 1:
        text += " (one group: the group adapter is the single adapter's twin, so any gain is boosting's)"
    return text


def headline(report: dict) -> dict:
    """The numbers a stakeholder asks first: mean accuracies, their difference (with its
    interval when per-row results were evaluated), cost ratios."""
    acc = report.get("accuracy") or {}
    mean = {m: (acc.get(m) or {}).get("mean") for m in MODELS}
    delta = None
    if mean["ensemble"] is not None and mean["baseline"] is not None:
        delta = mean["ensemble"] - mean["baseline"]
    ratio = report.get("flops_ratio") or {}
    gain = report.get("gain")
    return {
        "mean_accuracy": mean,
        "ensemble_minus_baseline": delta,
        "gain": gain,
        "gain_text": gain_text(gain),
        "gain_verdict": gain_verdict(gain),
        "gain_parts_text": gain_parts_text(
            report.get("gain_parts"), len(report.get("groups") or []) or None
        ),
        "training_flops_ratio": ratio.get("training_full"),
        "training_flops_ratio_paper": ratio.get("training_paper"),
        "inference_flops_ratio": ratio.get("inference"),
        "groups": report.get("groups"),
    }


WEIGHT_LABELS = {"own": "Ensemble, own weights", "fit": "Ensemble, fitted weights"}


def weights_table(report: dict) -> pd.DataFrame:
    """Mean accuracy and adapter forwards per example of the ensemble under each weights kind
    ("own": each task's group adapter; "fit": fitted mixtures), beside the single adapter."""
    by = report.get("by_weights") or {}
    forwards = report.get("inference_forwards_per_example") or {}
    baseline = ((report.get("accuracy") or {}).get("baseline") or {}).get("mean")
    rows = [
        {
            "model": label,
            "mean accuracy": by.get(kind),
            "forwards / example": forwards.get(kind),
        }
        for kind, label in WEIGHT_LABELS.items()
        if kind in by or kind in forwards
    ]
    if report.get("boosting"):  # the report's ensemble is then the weights plus the rounds
        ensemble = ((report.get("accuracy") or {}).get("ensemble") or {}).get("mean")
        rows.append(
            {
                "model": "Ensemble with boosting",
                "mean accuracy": ensemble,
                "forwards / example": forwards.get("ensemble"),
            }
        )
    rows.append(
        {
            "model": MODEL_LABELS["baseline"],
            "mean accuracy": baseline,
            "forwards / example": forwards.get("baseline", 1),
        }
    )
    return pd.DataFrame(rows).set_index("model")


def boosting_table(report: dict) -> pd.DataFrame:
    """One row per boosting adapter (ensemble.json "boosting"); empty when there are none."""
    rows = [
        {
            "adapter": b["name"],
            "tasks": ", ".join(b.get("tasks") or []),
            "group": b.get("group"),
            "method": b.get("method"),
            "step": b.get("step"),
            "train error before": b.get("train_error_before"),
            "train error after": b.get("train_error_after"),
        }
        for b in report.get("boosting") or []
    ]
    columns = ["adapter", "tasks", "group", "method", "step"]
    columns += ["train error before", "train error after"]
    return pd.DataFrame(rows, columns=columns).set_index("adapter")


def gain_table(report: dict) -> pd.DataFrame:
    """Per task: the gain in points over the baseline and its wins/losses/ties over seeds."""
    per_task = (report.get("gain") or {}).get("per_task") or {}
    columns = ["points", "wins", "losses", "ties"]
    frame = pd.DataFrame.from_dict(per_task, orient="index", columns=columns)
    return frame.rename_axis("task")


def comparable(a: Workspace, b: Workspace) -> bool:
    """Same base model and the same task data (test splits included), as recorded by the
    zero-shot evaluation: their accuracies are measured on the same examples."""
    fa = (a.read("eval", "zero_shot.json") or {}).get("fingerprint")
    fb = (b.read("eval", "zero_shot.json") or {}).get("fingerprint")
    return fa is not None and fa == fb


def accuracy_flops_points(ws: Workspace, others=()) -> pd.DataFrame:
    """Mean accuracy against training FLOPs: this workspace's ensemble (m = its groups),
    baseline (one adapter) and zero-shot, plus the ensembles of `others` that are
    `comparable` (e.g. the same experiment trained with another m). Columns: workspace,
    model, m, training FLOPs, mean accuracy."""
    rows = []
    for i, w in enumerate([ws, *others]):
        report = load_report(w)
        if report is None or (i and not comparable(ws, w)):
            continue
        costs = cost_table(report)
        for m in MODELS if i == 0 else ("ensemble",):
            acc = costs.loc[MODEL_LABELS[m], "Accuracy"]
            if acc is None or pd.isna(acc):
                continue
            k = len(report.get("groups") or []) if m == "ensemble" else 1 if m == "baseline" else 0
            rows.append(
                {
                    "workspace": w.root.name,
                    "model": m,
                    "m": k,
                    "training FLOPs": costs.loc[MODEL_LABELS[m], "training FLOPs"],
                    "mean accuracy": float(acc),
                }
            )
    return pd.DataFrame(
        rows, columns=["workspace", "model", "m", "training FLOPs", "mean accuracy"]
    )
