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


def epoch_plan(train, tcfg, epoch: int) -> list[tuple[int, np.ndarray]]:
    """One epoch's batches as (task index, row indices): task-homogeneous, shuffled across tasks.

    `train`: one sized item per task (its Encoded rows, or anything with len()). The order
    depends only on (training.seed, epoch); at most max_steps_per_epoch batches.
    """
    rng = np.random.default_rng([tcfg.seed, epoch])
    plan = []
    for t, enc in enumerate(train):
        order = rng.permutation(len(enc))
        plan += [(t, order[i : i + tcfg.batch_size]) for i in range(0, len(enc), tcfg.batch_size)]
    plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan[: tcfg.max_steps_per_epoch] if tcfg.max_steps_per_epoch else plan


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


def training_fingerprint(tcfg) -> dict:
    """The recipe's part of a run's fingerprint (core.train.run.run_fingerprint; the dashboard's
    freshness check reads the same): every training setting but epochs (a run may be extended
    and continues exactly), and the selection rule."""
    return tcfg.model_dump(exclude={"epochs"}) | {"selection": SELECTION}


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
