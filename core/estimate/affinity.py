"""The task-affinity matrix, from first-order estimates on sampled subsets of tasks.

For each sampled subset S the configured estimator (`core.estimate.fitter.fitter`: the recipe's replay
by default, or the paper's argmin) fits one update ŵ_S on the union of S's train rows and scores every task i in S on its own val rows: the table has
one row per (subset, task in subset). Then

    T_ij = mean over subsets S ∋ i, j of z_i(S),   z_i(S) = (score_i(S) − mean_S' score_i(S'))
                                                           / std_S' score_i(S')

with score = −loss or accuracy, z-scored per target task i over all subsets containing i
(std 0 -> z = 0). The diagonal is zeroed and T symmetrised, (T + Tᵀ)/2. Pairs never sampled
together get 0; `cooccurrence` counts how often each pair was. Positive T_ij: training with j
helps i, relative to i's other subsets.

`compute_affinity(cfg, ws)` is the pipeline step; its files (all written atomically):
  estimates/subsets.json   the sampled subsets and the settings that drew them
  estimates/results.csv    the per-subset table (the evidence behind T)
  affinity.json            {"tasks", "affinity", "metric", "subsets", "method", "reg", "max_norm",
                            "target", "counts", "base", "single", "fingerprint", ...}
"""

from __future__ import annotations

import hashlib
import io
import json
from itertools import combinations
from math import comb

import numpy as np
import pandas as pd

from core.artifacts import AFFINITY, SUBSETS
from core.errors import ConfigError, GroupTuneError
from core.estimate import fitter
from core.estimate.estimator import argmin_fitter, check_features, check_same_k, score
from core.gradients.store import store_metas
from core.io import write_json, write_text
from core.progress import computing, track

SEP = "+"  # joins task names in the table; never part of a task name (see core.io.safe_name)
ENUMERATE_LIMIT = 5000  # up to this many possible subsets, sample from the full list
COLUMNS = [
    "subset_id",
    "subset",
    "task",
    "loss",
    "accuracy",
    "base_loss",
    "base_accuracy",
    "reg",
    "norm",
    "flops",
]


# ---------------------------------------------------------------- subsets


def all_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Every pair of tasks, in the order of `names`."""
    return list(combinations(names, 2))


def _check_names(names: list[str]) -> None:
    if len(set(names)) != len(names):
        raise GroupTuneError(f"task names repeat: {names}")


def sample_subsets(task_names: list[str], K: int, size: int, seed: int = 0) -> list[tuple]:
    """K distinct subsets of `size` tasks, seeded; every task appears as evenly as possible.

    Each new subset takes the tasks used least so far (ties broken at random), so counts never
    differ by more than one while that is possible with distinct subsets. Members keep the
    order of `task_names`. K above the number of distinct subsets returns all of them.
    """
    names = list(task_names)
    _check_names(names)
    n = len(names)
    if not 1 <= size <= n:
        raise GroupTuneError(f"subset size {size} must be between 1 and the number of tasks ({n})")
    if K < 1:
        raise GroupTuneError(f"the number of subsets must be at least 1, got {K}")
    rng = np.random.default_rng(seed)
    total = comb(n, size)
    if K >= total:
        return list(combinations(names, size))
    counts = np.zeros(n)
    picked: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    pool = np.array(list(combinations(range(n), size))) if total <= ENUMERATE_LIMIT else None
    used = np.zeros(len(pool), dtype=bool) if pool is not None else None
    while len(picked) < K:
        if pool is not None:  # the least-used unused combination: lowest max count, then sum
            load = counts[pool].max(axis=1) * n + counts[pool].sum(axis=1) + rng.random(len(pool))
            row = int(np.argmin(np.where(used, np.inf, load)))
            used[row] = True
            pick = tuple(int(i) for i in pool[row])
        else:  # least-used tasks; more noise on each retry so a duplicate is left behind
            for attempt in range(1000):
                noise = rng.random(n) * (1 + attempt)
                pick = tuple(sorted(int(i) for i in np.argsort(counts + noise)[:size]))
                if pick not in seen:
                    break
        seen.add(pick)
        picked.append(pick)
        counts[list(pick)] += 1
    return [tuple(names[i] for i in s) for s in picked]


# ---------------------------------------------------------------- scoring


def _features_for(features_by_task: dict, subset) -> list:
    missing = [t for t in subset if t not in features_by_task]
    if missing:
        raise GroupTuneError(
            f"subset {list(subset)} names unknown tasks {missing}; "
            f"known: {sorted(features_by_task)}"
        )
    return [features_by_task[t] for t in subset]


def score_subsets(
    features_by_task: dict,
    subsets: list,
    fit: fitter.Fitter,
    progress: bool = True,
) -> pd.DataFrame:
    """Fit one update per subset (`fit`, core.estimate.fitter) and score its member tasks: a
    DataFrame with COLUMNS, one row per (subset, task in subset), subset_id = position."""
    feats_of = [_features_for(features_by_task, subset) for subset in subsets]
    used = {t: features_by_task[t] for subset in subsets for t in subset}
    check_same_k(list(used.values()), list(used))
    for name, tf in used.items():  # once per task, not once per subset
        check_features(tf, name)
    rows = []
    bar = track(len(subsets), "affinity", unit="subset") if progress else computing()
    with bar:
        for sid, (subset, feats) in enumerate(zip(subsets, feats_of, strict=True)):
            result = fit(feats)
            for name, tf in zip(subset, feats, strict=True):
                scores = score(tf, result)
                rows.append(
                    {
                        "subset_id": sid,
                        "subset": SEP.join(subset),
                        "task": name,
                        **scores,
                        "reg": result.reg,
                        "norm": result.norm,
                        "flops": result.flops if name == subset[0] else 0,  # once per subset
                    }
                )
            if progress:
                bar.update(1)
    return pd.DataFrame(rows, columns=COLUMNS)


def z_scores(table: pd.DataFrame, metric: str) -> pd.Series:
    if metric not in ("loss", "accuracy"):
        raise GroupTuneError(f"metric must be 'loss' or 'accuracy', got {metric!r}")
    score = -table["loss"] if metric == "loss" else table["accuracy"]
    grouped = score.groupby(table["task"])
    std = grouped.transform(lambda s: s.std(ddof=0))
    z = (score - grouped.transform("mean")) / std.where(std > 1e-12)
    return z.fillna(0.0)  # a task whose score never moves carries no affinity signal


def _pair_sums(table: pd.DataFrame, names: list[str], values) -> tuple[np.ndarray, np.ndarray]:
    """Sum of `values` over rows (target i, subset containing j), and the row counts."""
    index = {t: i for i, t in enumerate(names)}
    n = len(names)
    sums, counts = np.zeros((n, n)), np.zeros((n, n))
    for task, subset, v in zip(table["task"], table["subset"], values, strict=True):
        i = index.get(task)
        if i is None:
            continue
        for other in subset.split(SEP):
            j = index.get(other)
            if j is not None and j != i:
                sums[i, j] += v
                counts[i, j] += 1
    return sums, counts


def cooccurrence(table: pd.DataFrame, names: list[str]) -> np.ndarray:
    """(n, n) int: number of scored subsets containing both i and j (0 on the diagonal)."""
    _, counts = _pair_sums(table, names, np.zeros(len(table)))
    return counts.astype(int)


def affinity_matrix(table: pd.DataFrame, names: list[str], metric: str = "loss") -> np.ndarray:
    """(n, n) task affinity T from the per-subset table (module docstring); rows/cols = names."""
    _check_names(list(names))
    sums, counts = _pair_sums(table, list(names), z_scores(table, metric).to_numpy())
    T = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    T = (T + T.T) / 2.0
    np.fill_diagonal(T, 0.0)
    return T


class TaskAffinity:
    """sklearn-style: `TaskAffinity(subsets=30, subset_size=3).fit(features_by_task)`.

    Learned: subsets_ (list of tuples), table_ (DataFrame), affinity_matrix_ (n, n),
    cooccurrence_ (n, n), names_ (row/column order).
    """

    def __init__(
        self,
        subsets: int = 30,
        subset_size: int = 3,
        pairs: bool = False,
        metric: str = "loss",
        reg: float | None = None,
        max_norm: float | None = 1.0,
        random_state: int = 0,
    ):
        self.subsets, self.subset_size, self.pairs = subsets, subset_size, pairs
        self.metric, self.reg, self.max_norm = metric, reg, max_norm
        self.random_state = random_state

    def fit(self, features_by_task: dict, progress: bool = False) -> TaskAffinity:
        names = list(features_by_task)
        if self.pairs:
            self.subsets_ = all_pairs(names)
        else:
            self.subsets_ = sample_subsets(names, self.subsets, self.subset_size, self.random_state)
        fit = argmin_fitter(self.reg, self.max_norm)
        self.table_ = score_subsets(features_by_task, self.subsets_, fit, progress)
        self.names_ = names
        self.affinity_matrix_ = affinity_matrix(self.table_, names, self.metric)
        self.cooccurrence_ = cooccurrence(self.table_, names)
        return self


# ---------------------------------------------------------------- the pipeline step


def _digest(obj) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _subset_settings(cfg) -> dict:
    e = cfg.estimator
    return {
        "tasks": cfg.task_names,
        "K": e.subsets,
        "size": e.subset_size,
        "seed": e.seed,
        "pairs": e.pairs,
    }


def affinity_inputs(ws, cfg) -> dict:
    """What affinity.json is computed from; stored in it as "fingerprint"."""
    metas = store_metas(ws, cfg.task_names)
    return {"table": table_fingerprint(cfg, metas), "metric": cfg.estimator.metric}


def affinity_status(ws, cfg, now: dict | None = None) -> str:
    """'fresh (n subsets)', 'stale (why)' or 'missing': the rule compute_affinity uses to skip
    its work (before loading any feature) and the dashboard shows (`now`: affinity_inputs, when
    the caller has it)."""
    old = AFFINITY.read(ws)
    if old is None:
        return "missing"
    if list(old.get("tasks", [])) != list(cfg.task_names):
        return "stale (the tasks changed)"
    if old.get("fingerprint") != (now or affinity_inputs(ws, cfg)):
        return "stale (estimator settings or features changed)"
    if not ws.path("estimates", "results.csv").exists():
        return "stale (estimates/results.csv is missing)"
    return f"fresh ({old.get('subsets')} subsets)"


def table_fingerprint(cfg, metas: dict) -> str:
    """What the per-subset table depends on: the subsets' settings, the estimator, the target
    and each task's store key and resolved layout (`metas`: {task: meta.json}). Timestamps are
    left out, so features recomputed with the same key keep the table fresh. The dashboard's
    freshness check (core.views.stages) calls this too."""
    stores = {t: {"key": m.get("key"), "resolved": m.get("resolved")} for t, m in metas.items()}
    return _digest(
        {
            "settings": _subset_settings(cfg),
            "estimator": fitter.settings(cfg),
            "target": cfg.features.target,
            "stores": stores,
        }
    )


def _load_subsets(ws, settings: dict) -> list[tuple]:
    """The persisted subsets if drawn with these settings, else a fresh draw (persisted)."""
    stored = SUBSETS.read(ws)
    if stored and stored.get("settings") == settings:
        return [tuple(s) for s in stored["subsets"]]
    names = settings["tasks"]
    if settings["pairs"]:
        subsets = all_pairs(names)
    else:
        subsets = sample_subsets(names, settings["K"], settings["size"], settings["seed"])
    write_json(
        SUBSETS.path(ws),
        {"settings": settings, "subsets": [list(s) for s in subsets]},
    )
    return subsets


def _task_summaries(features_by_task: dict, fit: fitter.Fitter) -> tuple[dict, dict]:
    """Per task: base (zero-shot, linearised at w = 0) and singleton ("task alone") estimates."""
    base, single = {}, {}
    for name, tf in features_by_task.items():
        check_features(tf, name)
        result = fit([tf])
        s = score(tf, result)
        base[name] = {"loss": s["base_loss"], "accuracy": s["base_accuracy"]}
        single[name] = {
            "loss": s["loss"],
            "accuracy": s["accuracy"],
            "reg": result.reg,
            "norm": result.norm,
        }
    return base, single


def _result(names, table, metric, cfg, fingerprint, base, single, subsets) -> dict:
    e = cfg.estimator
    return {
        "tasks": names,
        "affinity": affinity_matrix(table, names, metric).tolist(),
        "metric": metric,
        "subsets": len(subsets),
        "subset_size": 2 if e.pairs else e.subset_size,
        "pairs": e.pairs,
        "method": e.method,
        "reg": e.reg,
        "reg_range": [float(table["reg"].min()), float(table["reg"].max())],
        "max_norm": e.max_norm,
        "target": cfg.features.target,
        "counts": cooccurrence(table, names).tolist(),
        "estimator_flops": int(table["flops"].sum()) if "flops" in table else 0,
        "base": base,
        "single": single,
        "fingerprint": fingerprint,
    }


def compute_affinity(cfg, ws, loader=None, progress: bool = True) -> dict:
    """Step 3 for an experiment: load features, score subsets, write affinity.json; return it.

    Recomputes nothing when affinity.json was made with the same settings and feature stores
    (compared by fingerprint); a new metric alone is recomputed from estimates/results.csv.
    `loader(ws, task) -> TaskFeatures` defaults to core.gradients.store.load_features.
    """
    if loader is None:
        from core.gradients.store import load_features as loader
    names, e = cfg.task_names, cfg.estimator
    if len(names) < 2:
        raise ConfigError(f"task affinity needs at least 2 tasks, the config has {len(names)}")
    if not e.pairs and e.subset_size > len(names):
        raise ConfigError(
            f"field 'estimator.subset_size': {e.subset_size} is more than the {len(names)} "
            "tasks; lower it or set estimator.pairs: true"
        )
    old, results_csv = AFFINITY.read(ws), ws.path("estimates", "results.csv")
    fingerprint = affinity_inputs(ws, cfg)
    if affinity_status(ws, cfg, fingerprint).startswith("fresh"):
        return old
    features = {name: loader(ws, name) for name in names}
    check_same_k(list(features.values()), names)  # the rows are validated when first used
    settings = _subset_settings(cfg)
    subsets = _load_subsets(ws, settings)
    same_table = old and old.get("fingerprint", {}).get("table") == fingerprint["table"]
    if same_table and results_csv.exists():
        table, base, single = pd.read_csv(results_csv), old["base"], old["single"]
    else:
        fit = fitter.fitter(cfg)
        table = score_subsets(features, subsets, fit, progress)
        base, single = _task_summaries(features, fit)
        buf = io.StringIO()
        table.to_csv(buf, index=False)
        write_text(results_csv, buf.getvalue())
    result = _result(names, table, e.metric, cfg, fingerprint, base, single, subsets)
    AFFINITY.write(ws, result)
    return result
