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


def _with_leave_outs(wide: pd.DataFrame) -> pd.DataFrame:
    """Adds others@<seed>_<metric>: the mean of every other seed (the leave-one-out targets)."""
    seeds, cols = seeds_in(wide), {}
    for s in seeds:
        for metric in ("loss", "accuracy"):
            others = [f"{metric}@{o}" for o in seeds if o != s]
            cols[f"others@{s}_{metric}"] = wide[others].mean(axis=1)
    return wide.assign(**cols)


def fair_specs(wide: pd.DataFrame, pred: str = "predicted") -> dict[str, tuple]:
    """The measures of fair_agreement as (kind, ((pred column, real column), ...)): a measure
    of several parts is their mean (the leave-one-seed-out folds)."""
    seeds = seeds_in(wide)
    pl, pa = f"{pred}_loss", f"{pred}_accuracy"
    specs = {
        "order_agreement_vs_mean": ("order", ((pl, "real_loss"),)),
        "within_task_corr_loss_vs_mean": ("corr", ((pl, "real_loss"),)),
        "within_task_corr_accuracy_vs_mean": ("corr", ((pa, "real_accuracy"),)),
    }
    if len(seeds) >= 2:
        specs.update(
            order_agreement_vs_others=("order", tuple((pl, f"others@{s}_loss") for s in seeds)),
            ceiling_order_agreement_loo=(
                "order", tuple((f"loss@{s}", f"others@{s}_loss") for s in seeds)),
            ceiling_corr_loss_loo=(
                "corr", tuple((f"loss@{s}", f"others@{s}_loss") for s in seeds)),
            ceiling_corr_accuracy_loo=(
                "corr", tuple((f"accuracy@{s}", f"others@{s}_accuracy") for s in seeds)),
        )  # fmt: skip
    return specs


def fair_agreement(wide: pd.DataFrame, pred: str = "predicted", n_boot: int = 500) -> dict:
    """An estimate (columns <pred>_loss, <pred>_accuracy beside seeds_wide's) against the mean
    of the real seeds, and the leave-one-seed-out ceiling, each with a 95% bootstrap interval
    over subsets: order_agreement_vs_mean, within_task_corr_loss_vs_mean,
    within_task_corr_accuracy_vs_mean, order_agreement_vs_others (against each seed's
    leave-out mean: the ceiling's own targets), ceiling_order_agreement_loo,
    ceiling_corr_loss_loo, ceiling_corr_accuracy_loo, pairs (same-task subset pairs), seeds,
    points. A measure with fewer than 2 seeds, or no pairs, is None."""
    names = list(fair_specs(wide, pred))
    out = {
        "seeds": len(seeds_in(wide)),
        "points": len(wide),
        "pairs": _order_counts(wide, "real_loss", "real_loss")[1] if len(wide) else 0,
    }
    if not len(wide):
        return out | {k: None for n in names for k in (n, f"{n}_ci")}
    wide = _with_leave_outs(wide)
    specs = fair_specs(wide, pred)
    point = Resampler(wide).measure(specs)
    intervals = Resampler(wide).intervals(specs, n_boot)
    for name in specs:
        out[name] = point[name]
        out[f"{name}_ci"] = intervals[name] if point[name] is not None else None
    for name in ("order_agreement_vs_others", "ceiling_order_agreement_loo",
                 "ceiling_corr_loss_loo", "ceiling_corr_accuracy_loo"):  # fmt: skip
        out.setdefault(name, None)
        out.setdefault(f"{name}_ci", None)
    return out


def seed_matched(wide: pd.DataFrame, by_seed: dict, n_boot: int = 500) -> dict:
    """Per-seed predictions (by_seed: {seed: DataFrame of subset, task, predicted_loss,
    predicted_accuracy}, e.g. the replay of that seed's batch order) against that same seed's
    fine-tune, averaged over seeds: order_agreement_seed_matched,
    within_task_corr_loss_seed_matched, with intervals."""
    df = wide
    for s, pred in by_seed.items():
        p = pred[["subset", "task", "predicted_loss", "predicted_accuracy"]]
        df = df.merge(p.rename(columns={"predicted_loss": f"pl@{s}",
                                        "predicted_accuracy": f"pa@{s}"}), on=["subset", "task"])  # fmt: skip
    specs = {
        "order_agreement_seed_matched": ("order", tuple((f"pl@{s}", f"loss@{s}") for s in by_seed)),
        "within_task_corr_loss_seed_matched": (
            "corr", tuple((f"pl@{s}", f"loss@{s}") for s in by_seed)),
    }  # fmt: skip
    point = Resampler(df).measure(specs)
    intervals = Resampler(df).intervals(specs, n_boot)
    out = {}
    for name in specs:
        out[name] = point[name]
        out[f"{name}_ci"] = intervals[name] if point[name] is not None else None
    return out


class Resampler:
    """order_agreement and within_task_corr of many column pairs at once, on the table and on
    bootstrap resamples of its subsets, vectorised: a resample is a vector of counts per
    subset, so a pair of rows of two subsets counts c_a·c_b times and a row's weight in a
    correlation is its subset's count (what `bootstrap_interval`'s relabelled copies give,
    pairs of a subset with its own copy being ties in reality). `bootstrap_interval` is the
    slow reference it is tested against."""

    def __init__(self, df: pd.DataFrame):
        self.df = df.reset_index(drop=True)
        self.subsets = list(dict.fromkeys(self.df["subset"]))
        sid = {s: i for i, s in enumerate(self.subsets)}
        self.row_subset = self.df["subset"].map(sid).to_numpy()
        self.tasks = [idx.to_numpy() for _, idx in self.df.groupby("task").groups.items()]

    def counts(self, n_boot: int, seed: int = 0) -> np.ndarray:
        """(n_boot, rows): each row's subset drawn how many times (subsets with replacement)."""
        rng = np.random.default_rng(seed)
        n = len(self.subsets)
        draws = rng.integers(0, n, size=(n_boot, n))
        per_subset = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(float)
        return per_subset[:, self.row_subset]

    def _order(self, pred: str, real: str, w: np.ndarray) -> np.ndarray:
        num, den = np.zeros(len(w)), np.zeros(len(w))
        p_all, r_all = self.df[pred].to_numpy(float), self.df[real].to_numpy(float)
        for rows in self.tasks:
            p, r, c = p_all[rows], r_all[rows], w[:, rows]
            dr, dp = np.sign(r[:, None] - r[None, :]), np.sign(p[:, None] - p[None, :])
            valid = np.triu(dr != 0, 1).astype(float)
            score = valid * np.where(dp == 0, 0.5, (dp == dr).astype(float))
            num += np.einsum("bi,ij,bj->b", c, score, c)
            den += np.einsum("bi,ij,bj->b", c, valid, c)
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)

    def _corr(self, pred: str, real: str, w: np.ndarray) -> np.ndarray:
        x_all, y_all = self.df[pred].to_numpy(float), self.df[real].to_numpy(float)
        sxy, sxx, syy, n = (np.zeros(len(w)) for _ in range(4))
        for rows in self.tasks:
            x, y, c = x_all[rows], y_all[rows], w[:, rows]
            tot = c.sum(axis=1, keepdims=True)
            safe = np.where(tot > 0, tot, 1)
            dx, dy = x - (c @ x)[:, None] / safe, y - (c @ y)[:, None] / safe
            sxy += (c * dx * dy).sum(axis=1)
            sxx += (c * dx * dx).sum(axis=1)
            syy += (c * dy * dy).sum(axis=1)
            n += tot[:, 0]
        ok = (n >= MIN_POINTS) & (np.sqrt(sxx / np.maximum(n, 1)) >= 1e-12)
        ok &= np.sqrt(syy / np.maximum(n, 1)) >= 1e-12
        return np.where(ok, sxy / np.sqrt(np.where(ok, sxx * syy, 1)), np.nan)

    def _values(self, specs: dict, w: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name, (kind, parts) in specs.items():
            fn = self._order if kind == "order" else self._corr
            folds = np.stack([fn(p, r, w) for p, r in parts])
            ok = ~np.isnan(folds)
            total = np.where(ok, folds, 0).sum(axis=0)
            out[name] = np.where(ok.any(axis=0), total / np.maximum(ok.sum(axis=0), 1), np.nan)
        return out

    def measure(self, specs: dict) -> dict[str, float | None]:
        """The measures on the table itself (every subset once)."""
        values = self._values(specs, np.ones((1, len(self.df))))
        return {k: (None if np.isnan(v[0]) else float(v[0])) for k, v in values.items()}

    def intervals(self, specs: dict, n_boot: int, seed: int = 0) -> dict[str, list | None]:
        """95% percentile intervals over `n_boot` resamples of the subsets."""
        w = self.counts(n_boot, seed)
        out = {}
        for name, v in self._values(specs, w).items():
            v = v[~np.isnan(v)]
            out[name] = percentile_interval(v) if len(v) else None
        return out
