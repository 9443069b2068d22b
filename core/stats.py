"""Is the ensemble's gain over the baseline more than noise? A paired bootstrap of the gain.

Input: one paired sample per training seed, `{task: (ensemble_correct, baseline_correct)}`, two
equal-length 0/1 arrays over the same test rows in the same order (eval/*.json "correct"). A
model's mean accuracy is the unweighted mean over tasks of its per-task accuracy (as
core.models.scoring.with_mean), so a seed's gain is the mean over tasks of acc_ensemble − acc_baseline.

`paired_gain(samples)` returns, in accuracy points (×100):
  {"points": mean gain over seeds, "ci": [low, high], "level": 0.95, "seeds": n_seeds,
   "rows": paired test rows per seed (all tasks), "replicates": bootstrap replicates,
   "per_task": {task: {"points", "wins", "losses", "ties"}}}   (wins etc. counted over seeds)
This is the "gain" entry of report.json, for one seed or several.

The interval is a percentile bootstrap that resamples both sources of noise at once: the
training seeds, and the test rows of each task. Rows are drawn once per replicate and task and
used for every drawn seed and for both models: the seeds are scored on the same test set, so
its luck is shared, and pairing cancels what both models get right or wrong together.
Torch-free (the dashboard reads these numbers).
"""

from __future__ import annotations

import numpy as np

from core.errors import GroupTuneError

REPLICATES = 2000
LEVEL = 0.95


def percentile_interval(values, level: float = LEVEL) -> list[float]:
    """[low, high]: the central `level` share of bootstrap values (percentile method)."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(np.asarray(values, dtype=float), [tail, 100 - tail])
    return [float(low), float(high)]


def paired_sample(ensemble: dict, baseline: dict) -> dict[str, tuple[list, list]]:
    """One seed's sample from two {task: [0|1 per test row]} (eval/*.json "correct")."""
    if set(ensemble) != set(baseline):
        raise GroupTuneError(
            f"paired gain: the ensemble was scored on tasks {sorted(ensemble)} but the baseline "
            f"on {sorted(baseline)}; evaluate both on the same tasks"
        )
    return {t: (ensemble[t], baseline[t]) for t in ensemble}


def _rows(values, where: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0 or not np.isin(arr, (0, 1)).all():
        raise GroupTuneError(f"paired gain: {where} must be a non-empty list of 0/1 per test row")
    return arr.astype(np.int64)


def _pair(pair, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise GroupTuneError(f"paired gain: {where} must be (ensemble rows, baseline rows)")
    return _rows(pair[0], f"{where}, ensemble"), _rows(pair[1], f"{where}, baseline")


def differences(samples: list[dict]) -> dict[str, np.ndarray]:
    """{task: (n_seeds, n_rows) ensemble − baseline correctness in {−1, 0, 1}}, inputs checked."""
    if not samples:
        raise GroupTuneError("paired gain: no seeds given")
    tasks = list(samples[0])
    if not tasks:
        raise GroupTuneError("paired gain: seed 0 has no tasks")
    diffs: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    for i, sample in enumerate(samples):
        if set(sample) != set(tasks):
            raise GroupTuneError(
                f"paired gain: seed {i} has tasks {sorted(sample)} but seed 0 has {sorted(tasks)}"
            )
        for task in tasks:
            ens, base = _pair(sample[task], f"seed {i}, task {task!r}")
            if len(ens) != len(base):
                raise GroupTuneError(
                    f"paired gain: seed {i}, task {task!r}: {len(ens)} ensemble rows but "
                    f"{len(base)} baseline rows (both must be scored on the same test rows)"
                )
            if diffs[task] and len(ens) != diffs[task][0].size:
                raise GroupTuneError(
                    f"paired gain: task {task!r} has {len(ens)} test rows in seed {i} but "
                    f"{diffs[task][0].size} in seed 0 (every seed is scored on the same rows)"
                )
            diffs[task].append(ens - base)
    return {t: np.stack(d) for t, d in diffs.items()}


def _draw_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(size, n): how often each of n items is drawn in n draws with replacement, per replicate."""
    idx = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
    return np.bincount(idx.ravel(), minlength=size * n).reshape(size, n)


def bootstrap_gains(
    diffs: dict[str, np.ndarray], replicates: int = REPLICATES, seed: int = 0
) -> np.ndarray:
    """(replicates,) mean gain in points of resampled seeds and rows (see the module doc)."""
    rng = np.random.default_rng(seed)
    n_seeds = next(iter(diffs.values())).shape[0]
    # one seed draw per replicate, for every task: a seed is one training run of all of them
    seed_counts = _draw_counts(rng, n_seeds, replicates)
    gains = np.zeros(replicates)
    for d in diffs.values():
        n = d.shape[1]
        per_seed = _draw_counts(rng, n, replicates) @ d.T / n  # (replicates, n_seeds)
        gains += (seed_counts * per_seed).sum(axis=1) / n_seeds
    return 100 * gains / len(diffs)


def paired_gain(
    samples: list[dict], replicates: int = REPLICATES, seed: int = 0, level: float = LEVEL
) -> dict:
    """The gain of the ensemble over the baseline with its bootstrap interval (module doc).

    samples: one {task: (ensemble 0/1 per row, baseline 0/1 per row)} per training seed.
    """
    diffs = differences(samples)
    task_points = {t: 100 * float(d.mean()) for t, d in diffs.items()}
    per_task = {}
    for task, d in diffs.items():
        net = d.sum(axis=1)  # per seed; same rows for both, so the sign is the accuracy order
        per_task[task] = {
            "points": task_points[task],
            "wins": int((net > 0).sum()),
            "losses": int((net < 0).sum()),
            "ties": int((net == 0).sum()),
        }
    return {
        "points": float(np.mean(list(task_points.values()))),
        "ci": percentile_interval(bootstrap_gains(diffs, replicates, seed), level),
        "level": level,
        "seeds": len(samples),
        "rows": int(sum(d.shape[1] for d in diffs.values())),
        "replicates": replicates,
        "per_task": per_task,
    }
