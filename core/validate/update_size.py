"""How far a fine-tune moved from the expansion point the estimate linearises around: the
weight change ‖scaling·B·A‖_F / ‖W‖_F and the change of A against a fresh seeded adapter
(core.validate.validation reports both per validated subset)."""

from __future__ import annotations

import math
from pathlib import Path

from core.errors import GroupTuneError


def base_norm(layer) -> float:
    """‖W‖_F of a LoRA layer's base matrix (bitsandbytes weights dequantised first)."""
    w = layer.get_base_layer().weight
    if getattr(w, "quant_state", None) is not None:  # 4-bit: numel() is half the true count
        import bitsandbytes.functional as bnbf

        w = bnbf.dequantize_4bit(w.data, w.quant_state)
    elif getattr(w, "SCB", None) is not None:  # 8-bit: int8 rows times their absmax / 127
        w = w.data.float() * w.SCB.float()[:, None] / 127
    return float(w.detach().float().norm())


def expansion_point(cfg) -> dict:
    """Per LoRA layer of a fresh seeded adapter: name -> (scaling, A0 (r, in) float64, ‖W‖_F)."""
    from core.models.adapters import attach_adapter, lora_layers
    from core.models.loading import load_model

    model, _ = load_model(cfg.model)
    peft_model = attach_adapter(model, cfg.adapter)
    return {
        name: (
            float(layer.scaling["default"]),
            layer.lora_A["default"].weight.detach().double().cpu(),
            base_norm(layer),
        )
        for name, layer in lora_layers(peft_model)
    }


def update_change(expansion: dict, adapter_file: Path) -> dict:
    """weight_change (total and largest matrix), a_change (total, largest) and ‖B‖_F of one
    adapter, read with safetensors; totals are ratios of root-sum-squares over the matrices."""
    from safetensors.torch import load_file

    weights = load_file(str(adapter_file))
    deltas, w_norms, moves, a0_norms, b_norms = [], [], [], [], []
    for name, (scaling, A0, w_norm) in expansion.items():
        try:
            A = weights[f"{name}.lora_A.weight"].double()
            B = weights[f"{name}.lora_B.weight"].double()
        except KeyError:
            raise GroupTuneError(
                f"{adapter_file}: no LoRA weights for layer {name}; it was trained with another "
                "adapter config (delete the folder and validate again)"
            ) from None
        deltas.append(scaling * float((B @ A).norm()))
        w_norms.append(w_norm)
        moves.append(float((A - A0).norm()))
        a0_norms.append(float(A0.norm()))
        b_norms.append(float(B.norm()))
    return {
        "weight_change": _rss(deltas) / _rss(w_norms),
        "weight_change_max_matrix": max(d / w for d, w in zip(deltas, w_norms, strict=True)),
        "a_change": _rss(moves) / _rss(a0_norms),
        "a_change_max_matrix": max(m / a for m, a in zip(moves, a0_norms, strict=True)),
        "b_norm": _rss(b_norms),
    }


def _rss(values: list[float]) -> float:
    """Root of the sum of squares: the Frobenius norm over all matrices from theirs."""
    return math.sqrt(sum(v * v for v in values))
