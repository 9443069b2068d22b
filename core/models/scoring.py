"""Scoring: answer-choice logits of a model on encoded rows, and the metrics computed from them."""

from __future__ import annotations

import numpy as np

from core.data.prompts import Answers, Encoded, batches
from core.progress import track


def model_device(model):
    return next(p.device for p in model.parameters())


def last_logits(model, batch: dict):
    """Logits (batch, vocab) at the answer position (the last column of a left-padded batch)."""
    return model(**batch, logits_to_keep=1).logits[:, -1].float()


def answer_logits(model, batch: dict, answers: Answers):
    """The logits a batch of core.models.prefix.model_inputs needs to score `answers`:
    (sequences, answers.width, vocab), the last positions of each left-padded sequence."""
    return model(**batch, logits_to_keep=answers.width).logits


def choice_scores(logits, answers: Answers, mean: bool = False):
    """(z (b, C), lse (b,)) from `answer_logits` of b rows.

    One-token words: z are the words' logits at the answer position and lse the vocabulary's
    log-normaliser, so log p(word) = z − lse (the stores keep z and lse apart, as before).
    Longer words: z is each word's log-probability, summed over its tokens (`mean`: averaged,
    the paper's per-token loss), and lse is 0. Either way a softmax over z is the distribution
    over the answer words that training, features and evaluation all use.
    """
    import torch

    if answers.single:
        last = logits[:, -1].float()
        return last[:, answers.ids], torch.logsumexp(last, dim=-1)
    per, width = len(answers.continuations), answers.width
    logp = logits.float().log_softmax(-1)
    logp = logp.reshape(-1, per, width, logp.shape[-1])  # (b, continuations, width, vocab)
    cols = []
    for toks, seq in zip(answers.tokens, answers.sequence_of, strict=True):
        n = len(toks)
        index = torch.tensor(toks, device=logp.device).expand(len(logp), n)
        picked = logp[:, seq, width - n :].gather(-1, index[..., None])[..., 0].sum(-1)
        cols.append(picked / n if mean else picked)
    z = torch.stack(cols, dim=1)
    return z, torch.zeros(len(z), device=z.device)


def choice_logits(
    model, tokenizer, enc: Encoded, batch_size: int = 16, desc: str | None = None
) -> np.ndarray:
    """(n, C) choice scores (`choice_scores`' z: a softmax over them is the model's answer
    distribution), rows in `enc` order."""
    import torch

    from core.models.prefix import model_inputs

    device = model_device(model)
    out = np.zeros((len(enc), len(enc.answers)), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), track(len(enc), desc or f"score {enc.task}", unit="row") as bar:
        for idx in batches(len(enc), batch_size, enc.lengths):
            batch = model_inputs(model, enc, idx, tokenizer.pad_token_id, device)
            z, _ = choice_scores(answer_logits(model, batch, enc.answers), enc.answers)
            out[idx] = z.cpu().numpy()
            bar.update(len(idx))
    model.train(was_training)
    return out


# --- metrics ----------------------------------------------------------------------------------
def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def macro_f1(gold: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Macro-F1 over the classes present in gold or pred (sklearn's convention)."""
    from sklearn.metrics import f1_score

    return float(
        f1_score(gold, pred, labels=list(range(n_classes)), average="macro", zero_division=0)
    )


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, bins: int = 10) -> float:
    """ECE of the top choice's probability, equal-width bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def metrics_from_logits(logits: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1, ECE and mean NLL from (n, C) choice logits and (n,) gold indices."""
    probs = softmax(logits.astype(np.float64))
    pred = probs.argmax(axis=1)
    nll = -np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-12, None))
    return {
        "accuracy": float((pred == gold).mean()),
        "f1": macro_f1(gold, pred, logits.shape[1]),
        "ece": expected_calibration_error(probs, gold),
        "nll": float(nll.mean()),
        "n": int(len(gold)),
    }


def with_mean(per_task: dict[str, dict[str, float]]) -> dict:
    """Add a "mean" entry averaging every metric over tasks (unweighted: each task counts once)."""
    if not per_task:
        return {}
    keys = [k for k in next(iter(per_task.values())) if k != "n"]
    mean = {k: float(np.mean([m[k] for m in per_task.values()])) for k in keys}
    return {**per_task, "mean": mean}
