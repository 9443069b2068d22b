"""The built-in tiny models (`tiny-llama`, `tiny-gpt2`): seeded random weights from a config in
code and a built-in tokenizer, for tests and offline checks.

The tiny models' tokenizer (`builtin_tokenizer`) is a byte-level BPE whose merges spell out a
fixed list of common English words, so each listed word (with or without a leading space, and
capitalised) is ONE token and any other text falls back to smaller pieces, down to single
bytes. Every string is encodable and decodes back exactly. It is deterministic and needs no files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from core.errors import GroupTuneError

if TYPE_CHECKING:
    pass

from core.models.registry import MODELS


def builtin_tokenizer():
    """The tiny models' tokenizer: byte-level BPE where each word of a fixed list is one token.

    Built in code, deterministic, no files or downloads. The vocabulary holds the 256 byte
    symbols and every prefix of every listed word (core.data.tokens.WORDS; with and without a
    leading space, also capitalised); merges grow words left to right. A listed word is looked
    up whole (`ignore_merges`), so it is always one token; unlisted text falls back to shorter
    pieces and finally to single bytes, so every string round-trips exactly. The
    `tokenizers` object itself is built by core.data.tokens, which the dashboard uses without torch.
    Special token: `<|endoftext|>` (bos, eos and pad).
    """
    from transformers import PreTrainedTokenizerFast

    from core.data.tokens import EOS, build_builtin_tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=build_builtin_tokenizer(),
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=2048,
    )
    tok.padding_side = "right"
    return tok


def build_tiny_config(name: str, vocab_size: int | None = None):
    """The transformers config of a built-in tiny model (vocabulary of `builtin_tokenizer`)."""
    from transformers import GPT2Config, LlamaConfig

    spec = MODELS.get(name)
    if spec is None or not spec.builtin:
        raise GroupTuneError(f"{name!r} is not a built-in tiny model ({', '.join(_tiny_names())})")
    b = {k: v for k, v in spec.builder.items() if k != "seed"}
    # Token ids of builtin_tokenizer: <|endoftext|> is id 0 and serves as bos, eos and pad.
    ids = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    vocab = vocab_size if vocab_size is not None else len(builtin_tokenizer())
    config_cls = LlamaConfig if spec.arch == "llama" else GPT2Config
    return config_cls(vocab_size=vocab, **b, **ids)


def _tiny_names() -> list[str]:
    return [n for n, s in MODELS.items() if s.builtin]


def build_tiny_model(name: str, *, attn_implementation: str | None = None):
    """Build a tiny registry model in memory: `(model, tokenizer)`, float32, CPU, eval mode.

    Weights are seeded (the spec's `seed`) without touching the global RNG, so two builds are
    identical.
    """
    from transformers import AutoModelForCausalLM

    tok = builtin_tokenizer()
    cfg = build_tiny_config(name, len(tok))
    cap_length(tok, cfg)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODELS[name].builder["seed"])
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, **kwargs)
    model.eval()
    return model, tok


def cap_length(tok, config) -> None:
    """Limit `model_max_length` to the model's context (GGUF tokenizers report ~1e30), so
    `truncation=True` never produces sequences longer than the position table."""
    n = getattr(config, "max_position_embeddings", None)
    if isinstance(n, int) and n > 0 and (tok.model_max_length or 0) > n:
        tok.model_max_length = n
