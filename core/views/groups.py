"""The Groups page's view: the sweep over m and the predicted accuracy of a grouping."""

from __future__ import annotations

import pandas as pd

from core.workspace import Workspace


def sweep_entries(ws: Workspace) -> list[dict]:
    return (ws.read("groupings", "sweep.json") or {}).get("entries", [])


def sweep_fresh(ws: Workspace) -> bool:
    sweep, aff = ws.read("groupings", "sweep.json"), ws.read("affinity.json")
    return bool(sweep and aff and sweep.get("fingerprint") == aff.get("fingerprint"))


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
