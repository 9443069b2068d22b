"""LoRA adapters on a base model: target modules, layer selection, seeded attachment, access.

An adapter is fully determined by its `AdapterConfig` and the base model: the same config and
seed give the same initial A matrices (B starts at zero, so the adapted model initially equals
the base model). `lora_layers` and `lora_b_parameters` expose the adapter in a stable order for
the gradient-feature stage, which hooks the LoRA layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from core.errors import ConfigError, GroupTuneError

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

    from core.config import AdapterConfig

# Attention projections adapted by default, per architecture family, in order of preference.
# Llama/Mistral/Qwen/SmolLM: separate q, k, v Linear layers; GPT-2: one fused Conv1D `c_attn`;
# GPT-NeoX/Falcon/Bloom: one fused `query_key_value`.
_DEFAULT_TARGETS: list[list[str]] = [
    ["q_proj", "k_proj", "v_proj"],
    ["c_attn"],
    ["query_key_value"],
]


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PeftModel (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _weight_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """`(name, module)` of every module holding weights of its own (Linear, Conv1D, norms...).

    On a model that already carries LoRA adapters, peft's wrapper stands for the module it
    wraps (its base layer is returned under the wrapper's name) and the adapters' own modules
    (lora_A, lora_B, ...) are skipped.
    """
    for name, mod in model.named_modules():
        parts = name.split(".")
        if not name or any(p == "base_layer" or p.startswith("lora_") for p in parts):
            continue
        if hasattr(mod, "base_layer") and callable(getattr(mod, "get_base_layer", None)):
            yield name, mod.get_base_layer()
        elif any(True for _ in mod.parameters(recurse=False)):
            yield name, mod


def _leaf_names(model: nn.Module) -> set[str]:
    """Last name component of every module with weights (what peft's target_modules match)."""
    return {name.rsplit(".", 1)[-1] for name, _ in _weight_modules(model)}


def default_target_modules(model: nn.Module) -> list[str]:
    """Module names LoRA adapts when `adapter.target_modules` is not set: attention q, k, v.

    Llama-style models give `q_proj, k_proj, v_proj`; GPT-2 gives its fused `c_attn` (Conv1D).
    Raises GroupTuneError naming the architecture and the module names found otherwise.
    """
    found = _leaf_names(base_model(model))
    for candidates in _DEFAULT_TARGETS:
        if all(c in found for c in candidates):
            return list(candidates)
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise GroupTuneError(
        f"no default LoRA target modules for architecture {model_type!r}: found modules "
        f"{sorted(found)}. Set adapter.target_modules to the attention projections' names."
    )


def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList of transformer blocks: `(attribute name, list)`, or None if not found.

    Taken as the longest ModuleList whose length equals `config.num_hidden_layers` (falling back
    to the longest ModuleList), which is `model.layers` for Llama and `transformer.h` for GPT-2.
    """
    base = base_model(model)
    n_cfg = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    lists = [(n, m) for n, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    exact = [(n, m) for n, m in lists if len(m) == n_cfg]
    pool = exact or lists
    if not pool:
        return None
    name, mods = max(pool, key=lambda nm: len(nm[1]))
    return name.rsplit(".", 1)[-1], mods


def num_layers(model: nn.Module) -> int:
    """Number of transformer layers (blocks) of the model."""
    cfg = getattr(base_model(model), "config", None)
    n = getattr(cfg, "num_hidden_layers", None)
    if isinstance(n, int) and n > 0:
        return n
    found = layer_list(model)
    if found is None:
        raise GroupTuneError(f"cannot tell how many layers {type(model).__name__} has")
    return len(found[1])


def layers_to_transform(model: nn.Module, top_layers: int | None) -> list[int] | None:
    """Indices of the top `top_layers` layers (the last ones), or None for all layers.

    Raises ConfigError naming `adapter.top_layers` when it is below 1 or above the layer count.
    """
    if top_layers is None:
        return None
    n = num_layers(model)
    if not 1 <= top_layers <= n:
        raise ConfigError(
            f"field 'adapter.top_layers': {top_layers} is out of range; the model has {n} "
            f"layers, so use 1..{n} (or leave it unset to adapt all layers)"
        )
    return list(range(n - top_layers, n))


def _is_conv1d(model: nn.Module, targets: list[str]) -> bool:
    """True if the targeted modules are transformers' Conv1D (weights stored in x out)."""
    from transformers.pytorch_utils import Conv1D

    return any(
        isinstance(m, Conv1D)
        for n, m in _weight_modules(base_model(model))
        if n.rsplit(".", 1)[-1] in targets
    )


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    found = _leaf_names(base_model(model))
    missing = [t for t in targets if t not in found]
    if missing:
        raise ConfigError(
            f"field 'adapter.target_modules': {missing} not found in the model; "
            f"its modules with weights are {sorted(found)}"
        )


def resolved_targets(adapter_cfg: AdapterConfig, model: nn.Module) -> list[str]:
    """`adapter.target_modules` if set (checked against the model), else the defaults."""
    if adapter_cfg.target_modules:
        targets = list(adapter_cfg.target_modules)
        _check_targets(model, targets)
        return targets
    return default_target_modules(model)


def lora_config(adapter_cfg: AdapterConfig, model: nn.Module) -> LoraConfig:
    """The peft LoraConfig for this adapter config on this model (causal LM, no bias).

    `top_layers` becomes `layers_to_transform` (the top L layers) with the model's own layer
    list name as `layers_pattern`. GPT-2's Conv1D targets get `fan_in_fan_out=True` (peft would
    otherwise warn and set it itself); bitsandbytes-quantized Conv1D are already plain
    Linear4bit/Linear8bitLt, so they don't.
    """
    from peft import LoraConfig

    targets = resolved_targets(adapter_cfg, model)
    layers = layers_to_transform(model, adapter_cfg.top_layers)
    pattern = None
    if layers is not None:
        found = layer_list(model)
        pattern = found[0] if found is not None else None
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=adapter_cfg.r,
        lora_alpha=adapter_cfg.alpha,
        lora_dropout=adapter_cfg.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        layers_pattern=pattern,
        bias="none",
        fan_in_fan_out=_is_conv1d(model, targets),
    )


def is_quantized(model: nn.Module) -> bool:
    """True if the base weights are bitsandbytes 4-bit or 8-bit."""
    base = base_model(model)
    return bool(
        getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)
    )


def attach_adapter(
    model: nn.Module,
    adapter_cfg: AdapterConfig,
    adapter_name: str = "default",
    *,
    gradient_checkpointing: bool = False,
) -> PeftModel:
    """Add a LoRA adapter and return the PeftModel (its base weights frozen).

    The RNG is seeded with `adapter_cfg.seed` right before the adapter is created, inside a
    forked RNG state (the caller's RNG is left untouched), so A is reproducible and B is zero.
    peft initialises A on the CPU before moving it, so the same seed gives the same A on CUDA.
    A quantized base goes through `prepare_model_for_kbit_training` first (norms and embeddings
    in float32, inputs requiring grad); `gradient_checkpointing` is passed on to it. Passing a
    PeftModel adds `adapter_name` as a further adapter (the active one stays unchanged).
    """
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    config = lora_config(adapter_cfg, model)
    if isinstance(model, PeftModel):
        if adapter_name in model.peft_config:
            raise GroupTuneError(f"the model already has an adapter named {adapter_name!r}")
        with _seeded(adapter_cfg.seed):
            model.add_adapter(adapter_name, config)
        return model
    if is_quantized(model):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    with _seeded(adapter_cfg.seed):
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    return peft_model


@contextlib.contextmanager
def _seeded(seed: int):
    """Run the block with `torch.manual_seed(seed)` in a forked RNG state (CPU and CUDA), so
    the caller's random streams are the same afterwards as before."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def lora_layers(
    peft_model: nn.Module, adapter_name: str = "default"
) -> Iterator[tuple[str, nn.Module]]:
    """Yield `(module name, LoRA layer)` for every layer carrying `adapter_name`, in model order.

    Each layer is a peft `LoraLayer` (wrapping nn.Linear, Conv1D or a bitsandbytes Linear4bit /
    Linear8bitLt) with `lora_A[adapter_name]`, `lora_B[adapter_name]` (nn.Linear, no bias),
    `scaling[adapter_name]` and `lora_dropout[adapter_name]`; its adapter update for input x is
    `lora_B(lora_A(dropout(x))) * scaling`.
    """
    from peft.tuners.lora import LoraLayer

    for name, mod in peft_model.named_modules():
        if isinstance(mod, LoraLayer) and adapter_name in mod.lora_A:
            yield name, mod


def lora_b_parameters(
    peft_model: nn.Module, adapter_name: str = "default"
) -> list[tuple[str, nn.Parameter]]:
    """The `lora_B` weights of `adapter_name` as `(name, Parameter)`, in model (layer) order.

    The order is that of `named_modules`, so it is the same for every load of the same model
    and config; features and stored gradients are laid out in this order.
    """
    return [
        (f"{name}.lora_B.{adapter_name}.weight", layer.lora_B[adapter_name].weight)
        for name, layer in lora_layers(peft_model, adapter_name)
    ]


def adapter_fingerprint(adapter_cfg: AdapterConfig, model: nn.Module) -> dict:
    """What identifies an adapter's shape and initialisation, for caches to detect staleness.

    Holds r, alpha, dropout, seed and the resolved target modules and layer indices (so
    `target_modules=None` and the equivalent explicit list give the same fingerprint).
    """
    layers = layers_to_transform(model, adapter_cfg.top_layers)
    return {
        "r": adapter_cfg.r,
        "alpha": float(adapter_cfg.alpha),
        "dropout": float(adapter_cfg.dropout),
        "seed": adapter_cfg.seed,
        "target_modules": resolved_targets(adapter_cfg, model),
        "layers": layers if layers is not None else list(range(num_layers(model))),
    }
