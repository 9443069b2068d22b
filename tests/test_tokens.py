"""core.data.tokens: torch-free token counts that agree with the tokenizer the model uses, and the
answer-word check `grouptune init` runs (every answer word one token, else task and word named)."""

from __future__ import annotations

import pytest
import yaml
from conftest import sentiment_rows, write_task

from core.config import ModelConfig, parse_config
from core.data import tokens
from core.data.tasks import Task
from core.errors import DataError
from core.models.loading import load_tokenizer
from core.models.registry import MODELS, model_dir
from core.models.tiny import builtin_tokenizer

TEXTS = [" positive", " 0", "0", " maybe", "Review: café ünï 🙂\nSentiment:", "<|endoftext|> hi"]


def test_registry_and_cache_agree_with_core_models():
    assert set(tokens.BUILTIN_MODELS) == {n for n, s in MODELS.items() if s.builtin}
    assert tokens.models_dir() == model_dir("x").parent


@pytest.mark.parametrize("name", ["tiny-llama", "smollm2-135m"])
def test_counts_match_the_models_tokenizer(name):
    tok = tokens.local_tokenizer(name)
    if tok is None:
        pytest.skip(f"{name} is not provisioned here")
    real = load_tokenizer(ModelConfig(name=name))
    for text in TEXTS:
        assert tokens.encode(tok, text) == real.encode(text, add_special_tokens=False), text


def test_builtin_tokenizer_is_one_object_for_both():
    assert builtin_tokenizer().get_vocab() == tokens.build_builtin_tokenizer().get_vocab()


def _task(name, labels):
    return Task(name=name, template="Review: {text}\nSentiment:", labels=labels,
                splits={"train": sentiment_rows(4)})  # fmt: skip


def test_check_accepts_multi_token_words_and_names_words_it_cannot_tell_apart(caplog):
    cfg = parse_config({"tasks": ["a"], "model": {"name": "tiny-llama", "quantization": "none"}})
    good = _task("good", {"negative": " negative", "positive": " positive"})
    long = _task("nli", {"yes": " yes", "maybe": " maybe", "zero": " 0"})
    with caplog.at_level("INFO", logger="grouptune.tokens"):
        tokens.check_tokens(cfg, [good, long])  # no error: ' maybe' is scored by its tokens
    assert "task nli: multi-token answer words ' maybe' (2 tokens), ' 0' (2 tokens)" in caplog.text
    assert "task good" not in caplog.text
    twins = _task("twins", {"a": " maybe", "b": " maybe"})
    with pytest.raises(DataError) as err:
        tokens.check_tokens(cfg, [good, twins])
    msg = str(err.value)
    assert "1 answer word(s) cannot be scored by model tiny-llama" in msg
    assert "task twins: answer words ' maybe' and ' maybe' are the same tokens" in msg
    assert err.value.field == "labels"


def test_two_words_of_one_token_are_named():
    tok = tokens.local_tokenizer("tiny-llama")
    same = _task("same", {"a": " positive", "b": "<|endoftext|>"})
    assert tokens.answer_word_problems(tok, same) == []
    twin = _task("twin", {"a": "positive", "b": "positive"})
    assert tokens.answer_word_problems(tok, twin) == [
        "task twin: answer words 'positive' and 'positive' are the same tokens ['positive']"
    ]


def test_a_model_not_here_is_not_checked(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GROUPTUNE_CACHE", str(tmp_path / "empty"))
    cfg = parse_config({"tasks": ["a"], "model": {"name": "smollm2-135m"}})
    tokens.check_tokens(cfg, [_task("t", {"a": " not one token", "b": " b"})])
    assert "answer words not checked: model smollm2-135m is not on this machine" in caplog.text
    assert tokens.count_tokens("smollm2-135m", "hello") is None


def test_run_checks_the_answer_words_before_queuing_any_job(tmp_path, capsys):
    """`grouptune run` refuses an answer word it cannot score at once, as `init` does, instead
    of queuing the pipeline and failing inside the gradients job."""
    from core.cli import main

    splits = {
        "train": sentiment_rows(8),
        "val": sentiment_rows(4, 50),
        "test": sentiment_rows(4, 90),
    }
    write_task(tmp_path / "tasks", "t", splits, {"negative": " negative", "positive": ""})
    config = tmp_path / "exp.yaml"
    config.write_text(
        yaml.safe_dump({"name": "x", "model": {"name": "tiny-llama"}, "tasks": ["t"],
                        "data": {"root": "tasks"}})
    )  # fmt: skip
    ws = tmp_path / "ws"
    assert main(["run", str(config), "--workspace", str(ws)]) == 2
    assert "label 'positive': answer word '' has no tokens" in capsys.readouterr().err
    assert not (ws / "jobs.db").exists()  # nothing was queued


def test_a_template_too_long_for_the_token_budget_is_named_before_any_job():
    cfg = parse_config({"tasks": ["a"], "model": {"name": "tiny-llama", "quantization": "none"},
                        "data": {"max_tokens": 12}})  # fmt: skip
    short = _task("short", {"negative": " negative", "positive": " positive"})
    tokens.check_tokens(cfg, [short])  # "Review: \nSentiment:" leaves room for the text
    wordy = Task(name="wordy", template="Read the review below with care. Review: {text}\nSentiment:",
                 labels=short.labels, splits={"train": sentiment_rows(4)})  # fmt: skip
    with pytest.raises(DataError) as err:
        tokens.check_tokens(cfg, [short, wordy])
    assert err.value.field == "data.max_tokens"
    assert str(err.value).startswith("field 'data.max_tokens': task wordy: the template alone is")
    assert "task short" not in str(err.value)
