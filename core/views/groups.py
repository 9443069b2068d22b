"""The Groups page's view: the sweep over m and the predicted accuracy of a grouping."""

from __future__ import annotations

import pandas as pd

from core.artifacts import SWEEP
from core.stages import command
from core.workspace import Workspace


def sweep_entries(ws: Workspace) -> list[dict]:
    return (SWEEP.read(ws) or {}).get("entries", [])


def sweep_frame(entries: list[dict]):
    """One row per (m, method): predicted mean accuracy and loss, objective, groups."""
    rows = [
        {
            "m": e["m"],
            "method": e["method"],
            "predicted mean accuracy": e["mean_accuracy"],
            "predicted mean loss": e["mean_loss"],
            "objective": e["objective"],
            "groups": " | ".join(", ".join(g) for g in e["groups"]),
            "note": e.get("fallback") or e.get("baseline") or "",
        }
        for e in entries
    ]
    return pd.DataFrame(rows)


def mean_predicted(predicted: dict[str, dict]) -> float:
    values = [p["accuracy"] for p in predicted.values()]
    return sum(values) / len(values) if values else float("nan")


def mix_targets(chosen: dict | None, task_names: list[str]) -> dict[str, list[str]]:
    """The adapters whose mixing weights can be set: {label: tasks in training order}, each
    group of the chosen grouping ("group i", CLI `--group i`) and the single adapter ("all")."""
    out = {}
    for i, group in enumerate((chosen or {}).get("groups") or []):
        if len(group) > 1:
            out[f"group {i}"] = [t for t in task_names if t in group]
    out["all"] = list(task_names)
    return out


def mix_argv(label: str, suggest: bool = True, weights: dict | None = None) -> list[str]:
    """`grouptune mix` for a label of mix_targets (without --workspace): a suggestion, or with
    `weights` the adapter trained with them (--train), the weights of 1 left out."""
    group = None if label == "all" else label.split()[-1]
    if weights is not None:
        given = [f"{t}={w:g}" for t, w in weights.items() if w != 1.0]
        return command("mix", group=group, weight=given, train=True)
    return command("mix", group=group, suggest=suggest)


def mix_effect(features: dict, cfg, tasks: list[str], weights: dict[str, float]) -> pd.DataFrame:
    """One row per task: its weight, the predicted val loss and accuracy under the weights and
    under uniform weights, and the change (core.estimate.mixing: the expected replay)."""
    from core.estimate.mixing import effect, predict_mix

    feats = [features[t] for t in tasks]
    tcfg, orders = cfg.training, cfg.estimator.orders
    mixed, uniform = (
        predict_mix(feats, tcfg, orders, weights),
        predict_mix(feats, tcfg, orders, None),
    )
    delta = effect(mixed, uniform)
    return pd.DataFrame(
        [
            {
                "task": t,
                "weight": weights.get(t, 1.0),
                "predicted val loss": mixed[t]["loss"],
                "Δ val loss": delta[t]["loss"],
                "predicted val accuracy": mixed[t]["accuracy"],
                "Δ val accuracy": delta[t]["accuracy"],
            }
            for t in tasks
        ]
    )


def mix_comparisons(ws) -> list[dict]:
    """The adapters trained with mixing weights (eval/mix-*.json, core.ensemble.mixed), each
    as {"label", "adapter", "weights", "gain_text", "table": per-task test accuracy, uniform
    against weighted}."""
    from core.report.tables import gain_text

    out = []
    for path in sorted(ws.path("eval").glob("mix-*.json")) if ws.path("eval").is_dir() else []:
        doc = ws.read("eval", path.name)
        rows = [
            {
                "task": t,
                "weight": doc["weights"].get(t, 1.0) if t != "mean" else None,
                "uniform accuracy": doc["uniform"][t]["accuracy"],
                "weighted accuracy": doc["weighted"][t]["accuracy"],
            }
            for t in [*doc["tasks"], "mean"]
        ]
        out.append(
            {
                "label": doc["label"],
                "adapter": doc["adapter"],
                "weights": doc["weights"],
                "gain_text": gain_text(doc["gain"]),
                "table": pd.DataFrame(rows),
            }
        )
    return out
