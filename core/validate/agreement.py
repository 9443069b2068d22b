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


# --- scoring the way a grouping decision uses the estimate ----------------------------------
# A grouping decides about fine-tunes that will be trained once, with a seed no estimate was
# given, so an estimate is scored against the MEAN of several real training seeds (the expected
# fine-tune), and its ceiling is what one real fine-tune achieves against the mean of the other
# seeds (leave one seed out). Scoring a prediction against the one seed whose batch order it
# copied (seed-matched) measures how well it predicts that run, a different and easier question.


def seeds_wide(real: pd.DataFrame) -> pd.DataFrame:
    """Real fine-tunes, one row per (seed, subset, task) with loss and accuracy, as one row per
    (subset, task): columns loss@<seed>, accuracy@<seed> and their means real_loss,
    real_accuracy. Only (subset, task) rows every seed has are kept."""
    seeds = sorted(real["seed"].unique())
    wide = real.pivot_table(index=["subset", "task"], columns="seed", values=["loss", "accuracy"])
    wide = wide.dropna()
    out = pd.DataFrame(index=wide.index)
    for metric in ("loss", "accuracy"):
        for s in seeds:
            out[f"{metric}@{s}"] = wide[(metric, s)]
        out[f"real_{metric}"] = wide[metric][seeds].mean(axis=1)
    return out.reset_index()


def seeds_in(wide: pd.DataFrame) -> list:
    return [c.split("@", 1)[1] for c in wide.columns if c.startswith("loss@")]


def _loo(wide: pd.DataFrame, measure, metric: str, pred: str | None = None) -> float | None:
    """Mean over seeds s of measure(df, <metric>@s, mean of the other seeds' <metric>): one
    real fine-tune against the others (the ceiling); with `pred`, that column in place of
    <metric>@s (the estimate against exactly the targets the ceiling is scored on)."""
    seeds = seeds_in(wide)
    if len(seeds) < 2:
        return None
    values = []
    for s in seeds:
        others = [f"{metric}@{o}" for o in seeds if o != s]
        df = wide.assign(_others=wide[others].mean(axis=1))
        v = measure(df, pred or f"{metric}@{s}", "_others")
        if v is not None:
            values.append(v)
    return float(np.mean(values)) if values else None


def fair_agreement(wide: pd.DataFrame, pred: str = "predicted", n_boot: int = 500) -> dict:
    """An estimate (columns <pred>_loss, <pred>_accuracy beside seeds_wide's) against the mean
    of the real seeds, and the leave-one-seed-out ceiling, each with a 95% bootstrap interval
    over subsets: order_agreement_vs_mean, within_task_corr_loss_vs_mean,
    within_task_corr_accuracy_vs_mean, order_agreement_vs_others (against each seed's
    leave-out mean: the ceiling's own targets), ceiling_order_agreement_loo,
    ceiling_corr_loss_loo, ceiling_corr_accuracy_loo, pairs (same-task subset pairs), seeds,
    points."""
    pl, pa = f"{pred}_loss", f"{pred}_accuracy"
    measures = {
        "order_agreement_vs_mean": lambda d: order_agreement(d, pl, "real_loss"),
        "within_task_corr_loss_vs_mean": lambda d: within_task_corr(d, pl, "real_loss"),
        "within_task_corr_accuracy_vs_mean": lambda d: within_task_corr(d, pa, "real_accuracy"),
        "order_agreement_vs_others": lambda d: _loo(d, order_agreement, "loss", pl),
        "ceiling_order_agreement_loo": lambda d: _loo(d, order_agreement, "loss"),
        "ceiling_corr_loss_loo": lambda d: _loo(d, within_task_corr, "loss"),
        "ceiling_corr_accuracy_loo": lambda d: _loo(d, within_task_corr, "accuracy"),
    }
    out = {
        "seeds": len(seeds_in(wide)),
        "points": len(wide),
        "pairs": _order_counts(wide, "real_loss", "real_loss")[1] if len(wide) else 0,
    }
    for name, measure in measures.items():
        out[name] = measure(wide) if len(wide) else None
        out[f"{name}_ci"] = (
            bootstrap_interval(wide, measure, n_boot=n_boot) if out[name] is not None else None
        )
    return out


def seed_matched(wide: pd.DataFrame, by_seed: dict, n_boot: int = 500) -> dict:
    """Per-seed predictions (by_seed: {seed: DataFrame of subset, task, predicted_loss,
    predicted_accuracy}, e.g. the replay of that seed's batch order) against that same seed's
    fine-tune, averaged over seeds: order_agreement_seed_matched,
    within_task_corr_loss_seed_matched, with intervals."""
    cols = {}
    for s, pred in by_seed.items():
        p = pred[["subset", "task", "predicted_loss", "predicted_accuracy"]]
        cols[str(s)] = p.rename(
            columns={"predicted_loss": f"pl@{s}", "predicted_accuracy": f"pa@{s}"}
        )
    df = wide
    for p in cols.values():
        df = df.merge(p, on=["subset", "task"])

    def mean_of(measure, metric):
        def run(d):
            vals = [measure(d, f"p{metric[0]}@{s}", f"{metric}@{s}") for s in cols]
            vals = [v for v in vals if v is not None]
            return float(np.mean(vals)) if vals else None

        return run

    out = {}
    for name, fn in (
        ("order_agreement_seed_matched", mean_of(order_agreement, "loss")),
        ("within_task_corr_loss_seed_matched", mean_of(within_task_corr, "loss")),
    ):
        out[name] = fn(df)
        out[f"{name}_ci"] = bootstrap_interval(df, fn, n_boot=n_boot) if out[name] else None
    return out
