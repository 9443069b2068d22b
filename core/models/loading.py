"""Loading a base model and its tokenizer, 4-bit/8-bit through bitsandbytes, and sizing it. Heavy imports (transformers, bitsandbytes) happen inside the functions that need them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from core import settings
from core.errors import ConfigError, GroupTuneError

if TYPE_CHECKING:
    from core.config import ModelConfig

from core.models import quantized
from core.models.device import configure_cpu, pick_device, pick_dtype
from core.models.provision import resolve_model
from core.models.registry import model_source
from core.models.tiny import build_tiny_config, build_tiny_model, builtin_tokenizer, cap_length
from core.progress import add_time


def _finish_tokenizer(tok):
    """Pad with eos when the tokenizer has no pad token; pad on the right (scoring reads the
    last real token through the attention mask, and training masks pads out)."""
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise GroupTuneError(
                f"tokenizer {tok.name_or_path!r} has neither a pad nor an eos token"
            )
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_tokenizer(model_cfg: ModelConfig):
    """The tokenizer of `model_cfg.name`, with a pad token (eos if none), right padding and
    `model_max_length` no longer than the model's context."""
    from transformers import AutoConfig, AutoTokenizer

    if model_source(model_cfg.name).builtin:
        tok = builtin_tokenizer()
        cap_length(tok, build_tiny_config(model_cfg.name, len(tok)))
        return _finish_tokenizer(tok)
    path, _ = resolve_model(model_cfg.name, model_cfg.revision)
    tok = AutoTokenizer.from_pretrained(path)
    cap_length(tok, AutoConfig.from_pretrained(path))
    return _finish_tokenizer(tok)


def _bnb_config(quantization: str, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ConfigError(
        f"field 'model.quantization': {quantization!r} is not one of none, 4bit, 8bit"
    )


def load_model(model_cfg: ModelConfig, *, attn_implementation: str | None = None):
    """Load `(model, tokenizer)` for a ModelConfig, in eval mode, on the configured device.

    quantization `none`: weights in the compute dtype; `4bit`: bitsandbytes NF4 with double
    quantization and the compute dtype (QLoRA); `8bit`: bitsandbytes int8. Quantized models are
    placed with `device_map={"": device}` (bitsandbytes quantizes while loading). Tiny models
    are built in memory; quantized tiny models are saved once to the cache and reloaded, because
    bitsandbytes quantization happens in `from_pretrained`. `attn_implementation` (e.g. "eager",
    "sdpa") is passed to transformers; None keeps its default.
    """
    start = time.perf_counter()
    model, tok = _load_model(model_cfg, attn_implementation)
    add_time("model_load", time.perf_counter() - start)  # part of a job's start-up tax
    return model, tok


def _load_model(model_cfg: ModelConfig, attn_implementation: str | None):
    from transformers import AutoTokenizer

    if settings.switched_off("GROUPTUNE_PROGRESS"):  # jobs and tests: no per-weight bar in logs
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    device = pick_device(model_cfg.device)
    dtype = pick_dtype(model_cfg.dtype, device)
    if device.type == "cpu":
        configure_cpu(model_cfg.threads)
    quant = model_cfg.quantization
    builtin = model_source(model_cfg.name).builtin
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation

    if builtin and quant == "none":
        model, tok = build_tiny_model(model_cfg.name, attn_implementation=attn_implementation)
        model = model.to(device=device, dtype=dtype)
    else:
        path, _ = resolve_model(model_cfg.name, model_cfg.revision)
        tok = builtin_tokenizer() if builtin else None
        tok = tok or AutoTokenizer.from_pretrained(path)
        kwargs["device_map"] = {"": str(device)}  # load straight onto the device
        model = _from_pretrained(model_cfg, path, device, kwargs)
    keep_bnb_training_layout(model)
    tok = _finish_tokenizer(tok)
    cap_length(tok, model.config)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def _from_pretrained(model_cfg: ModelConfig, path, device, kwargs: dict):
    """The model from its folder; a 4-bit one from the quantised cache when it is there (and
    put there when it is not: core.models.quantized)."""
    from transformers import AutoModelForCausalLM

    if model_cfg.quantization == "none":
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    folder = quantized.cache_folder(model_cfg, device)
    model = quantized.load_cached(folder, **kwargs) if folder else None
    if model is None:
        config = _bnb_config(model_cfg.quantization, kwargs["dtype"])
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, **kwargs)
        if folder:
            quantized.save_cached(folder, model)
    else:  # what adapters record as their base is the model, not the cache
        model.config.name_or_path = model.name_or_path = str(path)
    return model


def keep_bnb_training_layout(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit weight the first time it
    runs in eval mode without grad (absmax rounded to bf16) and from then on uses a kernel with
    no autograd, in training too: after the first validation no gradient would flow through the
    frozen base layers. One layout everywhere also means zero-shot scores, gradient features,
    training and evaluation all see exactly the same weights.
    """
    for layer in model.modules():
        if hasattr(layer, "support_avx512bf16_for_cpu"):
            layer.support_avx512bf16_for_cpu = False


def model_skeleton(model_cfg: ModelConfig):
    """The model's module tree on the meta device, without weights or quantisation: what an
    adapter's fingerprint needs (layer count, module names), in a fraction of a second."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_source(model_cfg.name).builtin:
        config = build_tiny_config(model_cfg.name)
    else:
        path, _ = resolve_model(model_cfg.name, model_cfg.revision)
        config = AutoConfig.from_pretrained(path)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)
