"""Default estimator: replay the training recipe on the linearised model.

The fine-tune GroupTune runs trains B only (training.freeze_a), on the answer-word loss
(training.loss "choices"), with AdamW over task-homogeneous batches in a seeded order
(core.recipe). B starts at 0, so the adapter's output is linear in B and, to first order,

    h_e(B) ≈ h_e + g_eᵀ w,     w = vec(B)  (features.projection "identity": g̃ = g)

The loss of row e is −log p_gold. With two answer words it is log(1 + exp(−h_e)) (h is the gold
answer's log-odds, itself linear in the two logits); with three or more the store also holds
every answer word's logit z_ec and gradient G_ec (core.gradients.store.per_choice_train), and the replay
linearises the logits and keeps the softmax exact, as the val side does. So every step of the
real run has a closed-form twin on the stored features:

    two words:  grad = −mean_e σ(−(h_e + g_eᵀ w)) g_e
    C words:    grad = mean_e Σ_c (softmax(z_e + G_e w)_c − [c = gold_e]) G_ec
    clipped to norm GRAD_CLIP, then AdamW at lr_at(step) with torch's update rule.

The replay visits the same batches in the same order as `core.train.trainer.fit` (same seed, same
epochs, same lr curve, same early stopping), scores every task's val rows with the linearised model after each epoch
(`core.estimate.estimator.predict`), and keeps the epoch the trainer would keep (core.recipe.is_better).
What it predicts is therefore the fine-tune itself, step by step, with no free step size and no
trust region. Under a JL sketch (k < D) the same loop runs in sketch coordinates, but Adam's
per-coordinate scaling does not pass through a sketch, so it is an approximation there
(bench/agreement.py measures both).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, softmax

from core.errors import GroupTuneError
from core.estimate.estimator import FitResult, one_blas_thread, predict, task_name
from core.recipe import (
    ADAM_BETAS,
    ADAM_EPS,
    GRAD_CLIP,
    epoch_plan,
    is_better,
    lr_at,
    should_stop,
)


class AdamW:
    """torch.optim.AdamW's update on a numpy vector (amsgrad off, decoupled weight decay)."""

    def __init__(self, k: int, weight_decay: float = 0.0):
        self.m, self.v = np.zeros(k), np.zeros(k)
        self.t, self.weight_decay = 0, weight_decay

    def step(self, w: np.ndarray, grad: np.ndarray, lr: float) -> np.ndarray:
        """The updated w (a new array); the moments are updated in place."""
        b1, b2 = ADAM_BETAS
        self.t += 1
        self.m *= b1
        self.m += (1.0 - b1) * grad
        self.v *= b2
        self.v += (1.0 - b2) * grad * grad
        denom = np.sqrt(self.v)
        denom *= 1.0 / np.sqrt(1.0 - b2**self.t)
        denom += ADAM_EPS
        step = self.m / denom
        step *= lr / (1.0 - b1**self.t)
        return w * (1.0 - lr * self.weight_decay) - step


def clipped(grad: np.ndarray) -> np.ndarray:
    """torch.nn.utils.clip_grad_norm_(…, GRAD_CLIP) on one vector."""
    coef = GRAD_CLIP / (float(np.linalg.norm(grad)) + 1e-6)
    return grad * min(coef, 1.0)


def _val_summary(features: list, w: np.ndarray) -> dict:
    scores = [predict(tf, w) for tf in features]
    return {
        "accuracy": float(np.mean([s["accuracy"] for s in scores])),
        "nll": float(np.mean([s["loss"] for s in scores])),
    }


def replay(features: list, tcfg) -> FitResult:
    """Replay `tcfg` (core.config.TrainingConfig) on the union of the tasks' train features.

    features: TaskFeatures in the order the tasks are trained (it fixes the batch plan).
    Returns the update of the epoch the trainer would keep, as a FitResult: w (k,), norm,
    n_rows, iterations = optimizer steps replayed, flops; reg is 0 (there is none).
    """
    with one_blas_thread():  # many small vector ops: a second BLAS thread only synchronises
        return _replay(features, tcfg)


def _replay(features: list, tcfg) -> FitResult:
    if not features:
        raise GroupTuneError("the replay needs the features of at least one task")
    sizes = [range(len(tf.train_h)) for tf in features]
    names = [task_name(tf) for tf in features]  # training.mix is by name
    steps_per_epoch = len(epoch_plan(sizes, tcfg, 0, names))
    w = np.zeros(int(features[0].k))
    opt, step, seen = AdamW(len(w), tcfg.weight_decay), 0, 0
    best, best_w, history = None, w, []
    for epoch in range(tcfg.epochs):
        if should_stop(history, tcfg.patience):
            break
        for t, rows in epoch_plan(sizes, tcfg, epoch, names):
            rows = np.sort(rows)  # a mean ignores the order; sorted memmap reads are sequential
            grad = batch_gradient(features[t], rows, w)
            w = opt.step(w, clipped(grad), lr_at(step, tcfg, steps_per_epoch))
            step, seen = step + 1, seen + len(rows)
        val = _val_summary(features, w)
        history.append(val)
        if is_better(val, best):
            best, best_w = val, w
    return FitResult(
        w=best_w,
        reg=0.0,
        norm=float(np.linalg.norm(best_w)),
        converged=True,
        n_rows=sum(len(r) for r in sizes),
        iterations=step,
        n_solves=1,
        flops=_flops(features, seen, step, len(history)),
    )


# The expected replay's batch orders come from training seeds this far above the config's,
# so they never coincide with a seed GroupTune trains (validate-estimate uses seed, seed + 1,
# …): the estimate is of the fine-tune in expectation, not of the run it will be scored on.
ORDER_SEED_OFFSET = 10_000


def order_seeds(tcfg, orders: int) -> list[int]:
    """The training seeds whose batch orders the expected replay averages over."""
    return [tcfg.seed + ORDER_SEED_OFFSET + r for r in range(orders)]


def expected_replay(features: list, tcfg, orders: int) -> FitResult:
    """The replay averaged over `orders` batch orders (order_seeds): an estimate of the
    fine-tune in expectation over training seeds, which is what a grouping decides about
    (a group adapter is trained once, with a seed no estimate was given). Returns a FitResult
    whose `members` are the single replays' updates (core.estimate.estimator.score averages
    their predictions); w is their mean, norm the mean of their norms."""
    fits = [
        replay(features, tcfg.model_copy(update={"seed": seed}))
        for seed in order_seeds(tcfg, orders)
    ]
    return FitResult(
        w=np.mean([f.w for f in fits], axis=0),
        reg=0.0,
        norm=float(np.mean([f.norm for f in fits])),
        converged=True,
        n_rows=fits[0].n_rows,
        iterations=sum(f.iterations for f in fits),
        n_solves=len(fits),
        flops=sum(f.flops for f in fits),
        members=tuple(f.w for f in fits),
    )


def batch_gradient(tf, rows: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Gradient of the mean linearised train loss of `rows` at w (module docstring), (k,)."""
    if getattr(tf, "train_G", None) is not None:
        G = np.asarray(tf.train_G[rows], dtype=np.float64)  # (b, C, k)
        p = softmax(np.asarray(tf.train_z[rows], dtype=np.float64) + G @ w, axis=1)
        p[np.arange(len(rows)), np.asarray(tf.train_gold)[rows]] -= 1.0
        return np.einsum("bc,bck->k", p, G) / len(rows)
    g = np.asarray(tf.train_g[rows], dtype=np.float64)
    h = np.asarray(tf.train_h[rows], dtype=np.float64)
    return -(g.T @ expit(-(h + g @ w))) / len(rows)


def _flops(features: list, rows: int, steps: int, epochs: int) -> int:
    """Analytic count: 4·k per row seen (the margin g·w and the gradient gᵀr; 4·C·k with
    per-choice train features, counted as 4·k here), ~12·k per step (clip and AdamW), and
    2·m·C·k per task and epoch for the linearised val logits."""
    k = int(features[0].k)
    val = sum(2 * int(np.prod(np.shape(tf.val_G))) for tf in features)
    return int(4 * rows * k + 12 * steps * k + epochs * val)


class Replay:
    """The estimator that replays the training recipe on the stored features."""

    name = "replay"
    summary = (
        "the training recipe (batches, AdamW, lr curve, epochs, best epoch) replayed on the "
        "linearised model, averaged over estimator.orders batch orders (bench/agreement.py)"
    )

    @staticmethod
    def fitter(cfg):
        tcfg, orders = cfg.training, cfg.estimator.orders
        return lambda features: expected_replay(features, tcfg, orders)

    @staticmethod
    def settings(cfg) -> dict:
        t = cfg.training.model_dump(mode="json", exclude=set() if cfg.training.mix else {"mix"})
        return {"method": "replay", "orders": cfg.estimator.orders, "training": t}
