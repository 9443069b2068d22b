"""Prompts as tokens: one-token answer words, the token budget, and padding that changes nothing."""

from __future__ import annotations

import pytest
import torch

from core.config import ModelConfig
from core.data.prompts import answer_token_ids, encode_prompt, pad_batch
from core.data.tasks import Task
from core.errors import DataError
from core.models.loading import load_model
from core.models.scoring import last_logits
from core.models.tiny import builtin_tokenizer

TOK = builtin_tokenizer()


def _task(labels=None, template="Review: {text}\nSentiment:") -> Task:
    return Task(
        name="t",
        template=template,
        labels=labels or {"negative": " negative", "positive": " positive"},
    )


def test_answer_words_are_single_tokens():
    ids = answer_token_ids(TOK, _task())
    assert len(ids) == 2 and TOK.decode([ids[1]]) == " positive"


def test_multi_token_answer_word_is_refused_with_its_pieces():
    with pytest.raises(DataError) as err:
        answer_token_ids(TOK, _task({"negative": " negative", "positive": " zyxwvut"}))
    msg = str(err.value)
    assert "' zyxwvut'" in msg and "label 'positive'" in msg and "field 'labels'" in msg


def test_long_text_is_cut_to_the_token_budget_not_the_template():
    row = {"text": " ".join(["good food"] * 200), "label": "positive"}
    ids = encode_prompt(TOK, _task(), row, max_tokens=40)
    assert len(ids) <= 40
    assert TOK.decode(ids).endswith("\nSentiment:")  # the answer cue survives the cut


def test_pair_fields_share_the_budget():
    task = _task(template="A: {text}\nB: {text_pair}\nSame?")
    row = {"text": "x " * 300, "text_pair": "y " * 300, "label": "positive"}
    text = TOK.decode(encode_prompt(TOK, task, row, max_tokens=60))
    assert "x" in text and "y" in text and text.endswith("Same?")


def test_template_over_budget_is_a_clear_error():
    task = _task(template="word " * 50 + "{text}")
    with pytest.raises(DataError, match="data.max_tokens"):
        encode_prompt(TOK, task, {"text": "a " * 100, "label": "positive"}, max_tokens=20)


def test_left_padding_gives_the_same_logits_as_no_padding():
    model, tok = load_model(ModelConfig(name="tiny-llama", quantization="none", threads=1))
    seqs = [tok.encode("The food was great and"), tok.encode("bad")]
    with torch.no_grad():
        batched = last_logits(model, pad_batch(seqs, tok.pad_token_id))
        alone = torch.cat([last_logits(model, pad_batch([s], tok.pad_token_id)) for s in seqs])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)
