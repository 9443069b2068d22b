"""model: and adapter: — the base model and the LoRA adapter every stage puts on it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config.section import Section


class ModelConfig(Section):
    name: str = Field("smollm2-135m", description="Registry name, Hub id or local folder.")
    revision: str | None = Field(None, description="Hub revision (commit, tag or branch).")
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "4bit", description="Base weights: full precision, or bitsandbytes NF4 (QLoRA) / int8."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype. auto: bfloat16 on CUDA with bf16 support, else float32."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA if present.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (None: all cores).")


class AdapterConfig(Section):
    r: int = Field(4, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.1, ge=0, lt=1, description="LoRA dropout (training only).")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt. None: attention q,k,v for the architecture."
    )
    top_layers: int | None = Field(
        None, ge=1, description="Adapt only the top L transformer layers (None: all layers)."
    )
    seed: int = Field(
        0, description="Seed of the adapter's initial A matrices (the expansion point)."
    )
    cache_lower_layers: bool = Field(
        True,
        description="With top_layers: compute the frozen lower layers once per prompt, cache "
        "their output on disk and run only the top layers (same results, core.models.prefix).",
    )
