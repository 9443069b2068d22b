"""The Affinity page's view: the evidence behind one cell and the estimator's settings."""

from __future__ import annotations

import pandas as pd

from core.artifacts import AFFINITY
from core.config import ExperimentConfig
from core.workspace import Workspace


def strongest_pair(T) -> tuple[str, str]:
    """The off-diagonal pair with the largest |affinity| (T a square DataFrame)."""
    best, pair = -1.0, (T.index[0], T.columns[min(1, len(T) - 1)])
    for i, a in enumerate(T.index):
        for b in T.columns[i + 1 :]:
            if abs(T.loc[a, b]) > best:
                best, pair = abs(T.loc[a, b]), (a, b)
    return pair


def pair_evidence(ws: Workspace, a: str, b: str):
    """The rows of estimates/results.csv behind T[a, b]: every scored subset holding both
    tasks, the rows of a and of b, with the z-score each contributes. T[a, b] is their mean
    (each side's mean, averaged) when the table is unchanged since affinity.json was made."""
    from core.estimate.affinity import SEP, z_scores

    path = ws.path("estimates", "results.csv")
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path)
    metric = (AFFINITY.read(ws) or {}).get("metric", "loss")
    table["z"] = z_scores(table, metric)
    both = table["subset"].map(lambda s: {a, b} <= set(s.split(SEP)))
    rows = table[both & table["task"].isin([a, b])].copy()
    rows["gain_accuracy"] = rows["accuracy"] - rows["base_accuracy"]
    cols = ["subset_id", "subset", "task", "z", "loss", "base_loss", "accuracy"]
    cols += ["base_accuracy", "gain_accuracy", "reg", "norm"]
    return rows[cols].reset_index(drop=True)


def projection_label(features) -> str:
    """What features.projection and features.k mean, in words."""
    from core.config import AUTO_SKETCH_K, IDENTITY_MAX_DIMS

    k = features.k or AUTO_SKETCH_K
    return {
        "identity": "exact (identity, k = D)",
        "auto": f"auto: exact while D ≤ {IDENTITY_MAX_DIMS:,}, else CountSketch k = {k}",
    }.get(features.projection, f"{features.projection}, k = {k}")


def estimator_settings(cfg: ExperimentConfig, view: dict | None) -> pd.DataFrame:
    """The estimator's settings: as configured, and as affinity.json was made with."""
    made = (view or {}).get("settings", {})
    e = cfg.estimator
    k = projection_label(cfg.features)
    rows = [
        ("estimator", e.method, made.get("method")),
        ("projection", k, None),
        ("subsets K", e.subsets, made.get("subsets")),
        ("subset size", e.subset_size, made.get("subset_size")),
        ("all pairs", e.pairs, made.get("pairs")),
        ("argmin: λ (L2; empty = calibrated)", e.reg, made.get("reg")),
        ("argmin: λ used (range)", None, made.get("reg_range")),
        ("argmin: max update norm", e.max_norm, made.get("max_norm")),
        ("metric", e.metric, made.get("metric")),
        ("target", cfg.features.target, made.get("target")),
    ]
    df = pd.DataFrame(rows, columns=["setting", "config", AFFINITY.name])
    return df.astype(str).replace({"None": "—"})
