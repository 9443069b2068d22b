"""The training recipe's schedule, torch-free: one source of truth for the trainer
(core.train.trainer) and for the estimator that replays it on the linearised model (core.estimate.replay).

Each adapter trains until `training.patience` epochs pass without a better val epoch (or
`training.epochs`, the maximum), and keeps its best epoch. Batches are task-homogeneous and
shuffled across tasks with an order that depends only on (training.seed, epoch); the lr warms
up linearly over the first WARMUP_FRACTION of an epoch's steps and then stays constant; gradients are clipped to a global norm of GRAD_CLIP; the
optimizer is AdamW with torch's defaults (ADAM_BETAS, ADAM_EPS).
"""

from __future__ import annotations

import numpy as np

GRAD_CLIP = 1.0
WARMUP_FRACTION = 0.1  # of one epoch's steps; independent of the number of epochs
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def epoch_plan(train, tcfg, epoch: int, names=None) -> list[tuple[int, np.ndarray]]:
    """One epoch's batches as (task index, row indices): task-homogeneous, shuffled across tasks.

    `train`: one sized item per task (its Encoded rows, or anything with len()); `names`: the
    tasks' names, for training.mix. An epoch has as many rows as the tasks together (each task's
    rows once, in a seeded order); with a mix, task t gets that total times its share
    n_t·w_t / Σ n·w instead (its rows cycled through seeded orders), so weights trade rows
    between tasks and never add steps. The order depends only on (training.seed, epoch); at
    most max_steps_per_epoch batches.
    """
    rng = np.random.default_rng([tcfg.seed, epoch])
    sizes = [len(enc) for enc in train]
    weights = task_weights(tcfg, names) if names is not None else None
    counts = sizes if weights is None else mixed_counts(sizes, weights)
    plan = []
    for t, (size, count) in enumerate(zip(sizes, counts, strict=True)):
        order = _rows(rng, size, count)
        plan += [(t, order[i : i + tcfg.batch_size]) for i in range(0, count, tcfg.batch_size)]
    plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan[: tcfg.max_steps_per_epoch] if tcfg.max_steps_per_epoch else plan


def _rows(rng, size: int, count: int) -> np.ndarray:
    """`count` row indices of a task of `size` rows: seeded orders of all its rows, one after
    another (one order when count == size: the plan without a mix, draw for draw)."""
    if count == 0 or size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([rng.permutation(size) for _ in range(-(-count // size))])[:count]


def task_weights(tcfg, names) -> list[float] | None:
    """The tasks' training.mix weights (1 for a task it does not name), or None when they are
    all equal among these tasks: then every task's rows count once, as with no mix."""
    if not tcfg.mix:
        return None
    weights = [float(tcfg.mix.get(n, 1.0)) for n in names]
    return None if len(set(weights)) <= 1 else weights


def mixed_counts(sizes: list[int], weights: list[float]) -> list[int]:
    """Rows per task in an epoch of Σ sizes rows, task t's share ∝ sizes[t]·weights[t]
    (largest remainders, so the counts add up exactly)."""
    from core.errors import ConfigError

    total, mass = sum(sizes), np.asarray(sizes, dtype=float) * np.asarray(weights, dtype=float)
    if mass.sum() <= 0:
        raise ConfigError("field 'training.mix': every task of this adapter has weight 0")
    raw = total * mass / mass.sum()
    counts = np.floor(raw).astype(int)
    for t in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[t] += 1
    return counts.tolist()


def lr_at(step: int, tcfg, steps_per_epoch: int) -> float:
    """Linear warmup, then constant: the same lr curve however many epochs are asked for."""
    warmup = max(1, int(WARMUP_FRACTION * steps_per_epoch))
    return tcfg.lr * min(1.0, (step + 1) / warmup)


# The best-epoch rule, named in every run's fingerprint so a checkpoint or adapter kept under
# another rule is not reused. Mean val NLL, not accuracy: with tens of val rows per task, the
# accuracy of two epochs often differs by one example, and choosing on that kept epochs whose
# loss was far worse (bench/results/agreement-claims.json); the loss moves smoothly, and it is
# what the estimator's replay predicts.
SELECTION = "lowest mean val nll, ties: higher mean val accuracy"


def training_fingerprint(tcfg, names=None) -> dict:
    """The recipe's part of a run's fingerprint (core.train.run.run_fingerprint; the dashboard's
    freshness check reads the same): every training setting but epochs (a run may be extended
    and continues exactly), and the selection rule. training.mix counts only as it bears on
    the run's tasks (`names`): their weights, normalised, and nothing when they are equal."""
    out = tcfg.model_dump(exclude={"epochs", "mix"}) | {"selection": SELECTION}
    weights = task_weights(tcfg, names) if names is not None else None
    if weights is not None:
        out["mix"] = {n: w / sum(weights) for n, w in zip(names, weights, strict=True)}
    elif names is None and tcfg.mix:
        out["mix"] = dict(tcfg.mix)
    return out


def epochs_since_best(history: list[dict]) -> int:
    """Epochs run since the best one (SELECTION) in `history`: per epoch {"nll", "accuracy"}."""
    best, since = None, 0
    for val in history:
        if is_better(val, best):
            best, since = val, 0
        else:
            since += 1
    return since


def should_stop(history: list[dict], patience: int | None) -> bool:
    """Early stopping: `patience` epochs in a row without a new best. The trainer and the
    estimator's replay both stop on this, so the estimate is of the run that really happens."""
    return bool(patience) and bool(history) and epochs_since_best(history) >= patience


def is_better(val: dict, best: dict | None) -> bool:
    """The best-epoch rule (SELECTION) on {"accuracy", "nll"} means of two epochs."""
    if best is None:
        return True
    return val["nll"] < best["nll"] or (
        val["nll"] == best["nll"] and val["accuracy"] > best["accuracy"]
    )
