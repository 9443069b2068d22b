"""How well an estimate tracks real fine-tunes WITHIN each task (what the affinity matrix uses).

The affinity step z-scores every task's score across the subsets that contain it, so only the
variation of a task's val loss (or accuracy) from one subset to another matters, not the level
of the task. These measures look at exactly that, on a table with one row per (subset, task):

  within_task_corr   Pearson correlation of predicted vs real after removing each task's mean
                     (pooled over tasks; None with fewer than 3 points or no spread)
  order_agreement    over every pair of subsets that share a task: the fraction ordered the same
                     way by the prediction and by the real value (a tie in the prediction counts
                     1/2, pairs tied in reality are left out); 0.5 is chance
  drop_rel_error     Σ|predicted drop − real drop| / Σ|real drop|, drop = base − value
  paper_rel_error    mean |predicted − real| / real (the paper's estimation error)

The same functions applied to two real fine-tunes with different training seeds give the noise
ceiling: how well the truth predicts itself. Torch-free (the dashboard reads these numbers).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from core.stats import percentile_interval

MIN_POINTS = 3


def _demeaned(df: pd.DataFrame, col: str) -> pd.Series:
    return df[col] - df.groupby("task")[col].transform("mean")


def within_task_corr(df: pd.DataFrame, pred: str, real: str) -> float | None:
    """Pooled correlation of pred and real with each task's mean removed (see module doc)."""
    x, y = _demeaned(df, pred).to_numpy(float), _demeaned(df, real).to_numpy(float)
    if len(x) < MIN_POINTS or x.std() < 1e-12 or y.std() < 1e-12:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _order_counts(df: pd.DataFrame, pred: str, real: str) -> tuple[float, int]:
    agree, pairs = 0.0, 0
    for _, rows in df.groupby("task"):
        p, r = rows[pred].to_numpy(float), rows[real].to_numpy(float)
        for i, j in combinations(range(len(rows)), 2):
            dr = np.sign(r[i] - r[j])
            if dr == 0:
                continue
            dp = np.sign(p[i] - p[j])
            agree += 0.5 if dp == 0 else float(dp == dr)
            pairs += 1
    return agree, pairs


def order_agreement(df: pd.DataFrame, pred: str, real: str) -> float | None:
    """Fraction of same-task subset pairs ordered alike (module doc); None without pairs."""
    agree, pairs = _order_counts(df, pred, real)
    return agree / pairs if pairs else None


def drop_rel_error(df: pd.DataFrame, pred: str, real: str, base: str) -> float | None:
    real_drop = df[base] - df[real]
    denom = float(real_drop.abs().sum())
    if denom < 1e-12:
        return None
    return float(((df[base] - df[pred]) - real_drop).abs().sum() / denom)


def paper_rel_error(df: pd.DataFrame, pred: str, real: str) -> float:
    return float(((df[pred] - df[real]).abs() / df[real]).mean())


def agreement(df: pd.DataFrame, pred: str = "predicted", real: str = "real") -> dict:
    """The loss and accuracy measures of one prediction against one truth.

    df: one row per (subset, task) with columns task, f"{pred}_loss", f"{real}_loss",
    f"{pred}_accuracy", f"{real}_accuracy" and base_loss.
    """
    pl, rl, pa, ra = f"{pred}_loss", f"{real}_loss", f"{pred}_accuracy", f"{real}_accuracy"
    return {
        "n_points": len(df),
        "n_pairs": _order_counts(df, pl, rl)[1],
        "within_task_corr_loss": within_task_corr(df, pl, rl),
        "within_task_corr_accuracy": within_task_corr(df, pa, ra),
        "order_agreement": order_agreement(df, pl, rl),
        "order_agreement_accuracy": order_agreement(df, pa, ra),
        "drop_rel_error": drop_rel_error(df, pl, rl, "base_loss"),
        "paper_rel_error": paper_rel_error(df, pl, rl),
        "accuracy_abs_error": float((df[pa] - df[ra]).abs().mean()),
    }


def per_task(df: pd.DataFrame, pred: str = "predicted", real: str = "real") -> dict:
    """{task: {n, within_task_corr_loss, order_agreement}} for one prediction."""
    pl, rl = f"{pred}_loss", f"{real}_loss"
    out = {}
    for task, rows in df.groupby("task", sort=False):
        out[task] = {
            "n": len(rows),
            "within_task_corr_loss": within_task_corr(rows, pl, rl),
            "order_agreement": order_agreement(rows, pl, rl),
            "real_spread": float(rows[rl].max() - rows[rl].min()),
            "predicted_spread": float(rows[pl].max() - rows[pl].min()),
        }
    return out


def bootstrap_interval(
    df: pd.DataFrame, measure, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> list[float] | None:
    """Percentile interval of `measure(df) -> float | None` over resampled subsets: whole
    subsets are drawn with replacement (a drawn twice subset counts as two), so the interval
    reflects which subsets happened to be sampled. None when the measure is undefined."""
    subsets = df["subset"].unique()
    groups = {s: rows for s, rows in df.groupby("subset")}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        draw = rng.choice(subsets, len(subsets), replace=True)
        sample = pd.concat(
            [groups[s].assign(subset=f"{s}#{i}") for i, s in enumerate(draw)], ignore_index=True
        )
        v = measure(sample)
        if v is not None:
            values.append(v)
    return percentile_interval(values, level) if values else None
