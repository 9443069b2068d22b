"""The Home page's one-screen story for a stakeholder: the groups, why (the affinity blocks),
predicted against real, the ensemble against one adapter with its interval, and the cost.

Torch-free: it only reads the workspace (groupings/chosen.json, affinity.json, the group
adapters' grouptune.json, report.json). Anything not made yet is None.
"""

from __future__ import annotations

import numpy as np

from core.artifacts import AFFINITY, CHOSEN, REPORT
from core.report.tables import gain_parts_text, gain_text, gain_verdict


def affinity_blocks(affinity: dict | None, groups: list[list[str]]) -> dict | None:
    """Mean affinity between tasks of the same group and between tasks of different groups
    (pairs never sampled together left out): why the groups are what they are."""
    if not affinity or not groups:
        return None
    names, T = affinity["tasks"], np.asarray(affinity["affinity"], dtype=float)
    counts = np.asarray(affinity.get("counts") or np.ones_like(T))
    where = {t: i for i, g in enumerate(groups) for t in g}
    within, across = [], []
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            if a in where and names[j] in where and counts[i, j] > 0:
                (within if where[a] == where[names[j]] else across).append(T[i, j])
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {"within": mean(within), "across": mean(across), "pairs": len(within) + len(across)}


def predicted_vs_real(chosen: dict | None, records: dict[str, dict]) -> list[dict]:
    """Per task: the estimate's predicted val accuracy for its group (chosen.json) beside the
    real group adapter's val accuracy at its kept epoch (same split, same routing)."""
    if not chosen:
        return []
    rows = []
    for i, group in enumerate(chosen["groups"]):
        real = (records.get(f"group-{i}") or {}).get("val_metrics") or {}
        for task in group:
            pred = chosen["predicted"].get(task) or {}
            rows.append(
                {
                    "task": task,
                    "group": i,
                    "predicted val accuracy": pred.get("accuracy"),
                    "real val accuracy": (real.get(task) or {}).get("accuracy"),
                }
            )
    return rows


def story(ws) -> dict:
    """{"groups", "m", "reason", "blocks", "predicted_vs_real", "gain_text", "gain_verdict",
    "gain_parts_text", "flops_paper", "flops_full"}."""
    chosen = CHOSEN.read(ws)
    groups = (chosen or {}).get("groups") or []
    records = {
        f"group-{i}": ws.read("adapters", f"group-{i}", "grouptune.json")
        for i in range(len(groups))
    }
    report = REPORT.read(ws) or {}
    ratio = report.get("flops_ratio") or {}
    return {
        "groups": groups,
        "m": len(groups) or None,
        "reason": (chosen or {}).get("reason"),
        "blocks": affinity_blocks(AFFINITY.read(ws), groups),
        "predicted_vs_real": predicted_vs_real(chosen, records),
        "gain_text": gain_text(report.get("gain")),
        "gain_verdict": gain_verdict(report.get("gain")),
        "gain_parts_text": gain_parts_text(report.get("gain_parts"), len(groups) or None),
        "flops_paper": ratio.get("training_paper"),
        "flops_full": ratio.get("training_full"),
    }
