"""Tables that both the stakeholder export and the dashboard show: the affinity matrix in clustered order and the groups with their predictions."""

from __future__ import annotations

import pandas as pd

from core.artifacts import AFFINITY, CHOSEN
from core.workspace import Workspace


def clustered_order(T, names: list[str], groups: list[list[str]] | None = None) -> list[str]:
    """Task order for the heatmap: group by group (when given, in their order), and within a
    group by average-linkage hierarchical clustering on the affinity (similar tasks adjacent)."""
    import numpy as np
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    T = np.asarray(T, dtype=float)
    if len(names) > 2:
        D = T.max() - (T + T.T) / 2
        np.fill_diagonal(D, 0.0)
        leaves = [names[i] for i in leaves_list(linkage(squareform(D, checks=False), "average"))]
    else:
        leaves = list(names)
    if not groups:
        return leaves
    rank = {t: i for i, t in enumerate(leaves)}
    out = [t for g in groups for t in sorted(g, key=lambda t: rank.get(t, 0))]
    return out + [t for t in leaves if t not in out]


def affinity_view(ws: Workspace) -> dict | None:
    """affinity.json reordered for display: {"order", "T" (DataFrame), "counts" (DataFrame),
    "settings", "groups"}; None when there is no affinity yet."""
    aff = AFFINITY.read(ws)
    if aff is None:
        return None
    names = list(aff["tasks"])
    chosen = CHOSEN.read(ws)
    groups = chosen["groups"] if chosen and set(sum(chosen["groups"], [])) == set(names) else None
    order = clustered_order(aff["affinity"], names, groups)
    T = pd.DataFrame(aff["affinity"], index=names, columns=names).loc[order, order]
    counts = pd.DataFrame(aff.get("counts") or 0, index=names, columns=names).loc[order, order]
    keys = ("metric", "subsets", "subset_size", "pairs", "method", "reg", "reg_range", "max_norm")
    keys += ("target",)
    return {
        "order": order,
        "T": T,
        "counts": counts,
        "settings": {k: aff.get(k) for k in keys},
        "groups": groups,
    }


def groups_frame(groups: list[list[str]], predicted: dict[str, dict]):
    """Per task: its group, predicted accuracy after fine-tuning, zero-shot (linearised)
    accuracy and the predicted gain."""
    rows = []
    for i, group in enumerate(groups):
        for task in group:
            p = predicted.get(task, {})
            acc, base = p.get("accuracy"), p.get("base_accuracy")
            gain = acc - base if acc is not None and base is not None else None
            rows.append(
                {
                    "task": task,
                    "group": i,
                    "predicted accuracy": acc,
                    "zero-shot (linearised)": base,
                    "predicted gain": gain,
                    "predicted loss": p.get("loss"),
                }
            )
    return pd.DataFrame(rows)
