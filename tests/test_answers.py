"""Multi-token answer words end to end (issue 17): a choice's score is its tokens' summed
log-probability (the paper's mean over tokens for features.target vocab), in the features, the
estimator's inputs, the training loss and the scoring.

The checks: the general path run on one-token words gives the one-token path's results (a task
written two ways); multi-token features equal an independent per-example reference that scores
each word by its own forward over prompt + word; training on multi-token words lowers their
loss; and a task with such words runs through the CLI's steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import make_cfg, rows, topic_rows, write_task, write_tiny_experiment

from core.config import parse_config
from core.data.prompts import Answers, encode_split
from core.data.sources import load_tasks
from core.gradients.extract import extract_features, load_extraction_model
from core.gradients.per_example import batch_features, reference_example_grads
from core.gradients.store import load_features
from core.models.prefix import model_inputs
from core.models.scoring import choice_logits, softmax
from core.train.loop import answer_loss
from core.workspace import Workspace

SHARED = {"negative": " very bad", "positive": " very good"}  # one continuation: ' very'
THREE = {"negative": " very bad", "positive": " very good", "neutral": " so so"}


class General(Answers):
    """The same token ids, always taken through the multi-token path."""

    @property
    def single(self) -> bool:
        return False


def _task_cfg(tmp_path, labels, **sections):
    splits = {"train": rows(9), "val": rows(6, 50), "test": rows(6, 80)}
    if len(labels) == 3:  # every label present
        for split in splits.values():
            for i, r in enumerate(split):
                r["label"] = list(labels)[i % 3]
    write_task(tmp_path / "tasks", "alpha", splits, labels, template="Review: {text}\nIt was")
    cfg = make_cfg(tmp_path, model_name="tiny-llama", **sections).model_dump(exclude={"base_dir"})
    return parse_config(cfg | {"tasks": ["alpha"]}, base_dir=tmp_path)


def _encode(cfg, split="train"):
    model, tok, projector = load_extraction_model(cfg)
    enc = encode_split(tok, load_tasks(cfg)[0], split, cfg.data.max_tokens)
    return model, tok, projector, enc


def _features(model, enc, answers, target, split, projector=None):
    idx = np.arange(len(enc))
    enc = type(enc)(enc.task, enc.split, enc.input_ids, enc.gold, answers)
    batch = model_inputs(model, enc, idx, 0, torch.device("cpu"))
    out = batch_features(model, batch, answers, enc.gold, target, split, projector)
    return {k: v.detach().double().numpy() for k, v in out.items()}


@pytest.mark.parametrize("target", ["choices", "vocab"])
def test_one_token_task_written_two_ways_gives_the_same_features(tmp_path, target):
    """One-token words through the multi-token path: same h and g on train rows; on val rows
    the scores are the log-probabilities z − lse (lse 0), the same model to first order."""
    cfg = _task_cfg(tmp_path, {"negative": " negative", "positive": " positive"})
    model, _, projector, enc = _encode(cfg, "train")
    fast, general = enc.answers, General(enc.answers.tokens)
    one = _features(model, enc, fast, target, "train", projector)
    two = _features(model, enc, general, target, "train", projector)
    np.testing.assert_allclose(two["h"], one["h"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two["g"], one["g"], rtol=1e-4, atol=1e-6)
    one = _features(model, enc, fast, "vocab", "val", projector)
    two = _features(model, enc, general, "vocab", "val", projector)
    np.testing.assert_allclose(two["z"], one["z"] - one["lse"][:, None], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(two["G"], one["G"] - one["Glse"][:, None], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two["h"], one["h"], rtol=1e-5, atol=1e-6)
    assert not two["lse"].any() and not two["Glse"].any()


def test_one_token_task_written_two_ways_scores_and_trains_the_same(tmp_path):
    cfg = _task_cfg(tmp_path, {"negative": " negative", "positive": " positive"})
    model, tok, _, enc = _encode(cfg, "val")
    general = type(enc)(enc.task, enc.split, enc.input_ids, enc.gold, General(enc.answers.tokens))
    p_fast = softmax(choice_logits(model, tok, enc).astype(np.float64))
    p_general = softmax(choice_logits(model, tok, general).astype(np.float64))
    np.testing.assert_allclose(p_general, p_fast, rtol=1e-5, atol=1e-6)
    gold, idx = torch.as_tensor(enc.gold), np.arange(len(enc))
    for kind in ("choices", "vocab"):
        losses = [
            answer_loss(model, model_inputs(model, e, idx, 0, "cpu"), gold, e.answers, kind)
            for e in (enc, general)
        ]
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("labels", "target", "top_layers"),
    [(SHARED, "choices", None), (THREE, "choices", 1), (SHARED, "vocab", 1)],
)
def test_multi_token_features_equal_the_per_example_reference(tmp_path, labels, target, top_layers):
    """The stored features of words of two tokens (one shared continuation, or two; with and
    without the frozen-prefix cache) equal autograd's on one forward per word over prompt +
    word, unpadded: summed log-probabilities with "choices", the mean over tokens with "vocab"."""
    cfg = _task_cfg(
        tmp_path,
        labels,
        features={"projection": "identity", "target": target},
        training={"loss": target},
        adapter={"top_layers": top_layers},
    )
    ws = Workspace(tmp_path / "ws")
    extract_features(cfg, ws)
    f = load_features(ws, "alpha", cfg, load_tasks(cfg)[0])
    model, tok, _ = load_extraction_model(cfg)  # a fresh model: no cache attached
    task = load_tasks(cfg)[0]
    for split in ("train", "val"):
        enc = encode_split(tok, task, split, cfg.data.max_tokens)
        assert not enc.answers.single and enc.answers.width == 2
        ref = reference_example_grads(model, enc.input_ids, enc.answers, enc.gold, target, split)
        got = {"train": {"h": f.train_h, "g": f.train_g}, "val": {"h": f.val_h, "G": f.val_G}}
        if f.train_G is not None:
            got["train"] |= {"z": f.train_z, "G": f.train_G}
        got["val"]["z"] = f.val_z
        for name, value in got[split].items():
            if value is None:
                continue
            np.testing.assert_allclose(np.asarray(value), ref[name], rtol=2e-4, atol=1e-5)
    assert (f.train_G is not None) == (len(labels) == 3)


@pytest.mark.parametrize("kind", ["choices", "vocab"])
def test_training_loss_on_multi_token_words_equals_the_reference(tmp_path, kind):
    """The trainer's loss over a left-padded batch of shared-continuation sequences, and its
    gradient, equal the loss built from one unpadded forward per row and word."""
    from core.gradients.per_example import reference_scores
    from core.models.adapters import lora_b_parameters

    cfg = _task_cfg(tmp_path, THREE, training={"loss": kind}, features={"target": kind})
    model, _, _, enc = _encode(cfg, "train")
    params = [p for _, p in lora_b_parameters(model)]
    with torch.no_grad():
        for p in params:  # an adapter that changes the output (B = 0 leaves the base model)
            p.normal_(0, 0.05)
    idx, gold = np.arange(len(enc)), torch.as_tensor(enc.gold)
    loss = answer_loss(model, model_inputs(model, enc, idx, 0, "cpu"), gold, enc.answers, kind)
    terms = []
    for ids, y in zip(enc.input_ids, enc.gold, strict=True):
        z, _ = reference_scores(model, ids, enc.answers, kind == "vocab", "cpu")
        terms.append(-(z.log_softmax(0) if kind == "choices" else z)[int(y)])
    ref = torch.stack(terms).mean()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params),
                         strict=True):  # fmt: skip
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_multi_token_task_runs_through_every_step_of_the_cli(tmp_path):
    from dashboard import cli

    config = write_tiny_experiment(tmp_path)
    write_task(tmp_path / "tasks", "topics",
               {"train": topic_rows(16), "val": topic_rows(8, 50), "test": topic_rows(8, 90)},
               {"sports": " sports news", "politics": " politics news"},
               template="News: {text}\nTopic:")  # fmt: skip
    meta = yaml.safe_load((tmp_path / "tasks" / "reviews_b" / "task.yaml").read_text())
    meta["labels"] = SHARED
    (tmp_path / "tasks" / "reviews_b" / "task.yaml").write_text(yaml.safe_dump(meta))
    ws = tmp_path / "ws"
    cli("init", "--config", config, "--workspace", ws)
    for step in (["gradients"], ["affinity"], ["group", "--m", "2"], ["train"]):
        cli(*step, "--workspace", ws)
    cli("evaluate", "--workspace", ws)
    accuracy = cli("report", "--workspace", ws)["accuracy"]["ensemble"]
    for task in ("topics", "reviews_b", "reviews_a"):
        assert 0 <= accuracy[task] <= 1 and accuracy[task] * 8 == round(accuracy[task] * 8)
    store = load_features(Workspace(ws), "topics")
    assert store.val_z.shape == (8, 2) and (np.asarray(store.val_z) < 0).all()  # log-probs
