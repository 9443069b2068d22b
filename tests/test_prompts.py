"""Prompts as tokens: one-token answer words, the token budget, and padding that changes nothing."""

from __future__ import annotations

import pytest
import torch

from core.config import ModelConfig
from core.data.prompts import answer_tokens, encode_prompt, pad_batch
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


def test_one_token_answer_words_need_the_prompt_alone():
    answers = answer_tokens(TOK, _task())
    assert answers.single and TOK.decode([answers.ids[1]]) == " positive"
    assert answers.continuations == [()] and answers.width == 1


def test_multi_token_words_get_one_sequence_per_distinct_beginning():
    """' very good' and ' very bad' share their first token: one sequence (prompt + ' very')
    scores both; ' so so' needs its own (prompt + ' so')."""
    words = {"bad": " very bad", "good": " very good", "so-so": " so so"}
    answers = answer_tokens(TOK, _task(words))
    assert [TOK.decode(list(t)) for t in answers.tokens] == list(words.values())
    assert not answers.single and answers.width == 2
    assert [TOK.decode(list(c)) for c in answers.continuations] == [" very", " so"]
    assert answers.sequence_of == [0, 0, 1]


def test_two_words_with_the_same_tokens_are_refused():
    with pytest.raises(DataError) as err:
        answer_tokens(TOK, _task({"negative": " positive", "positive": " positive"}))
    assert "are the same tokens" in str(err.value) and "field 'labels'" in str(err.value)


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
