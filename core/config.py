"""The experiment config: one validated schema for every stage, loaded from YAML.

Every field carries help text; `load_config` turns pydantic's errors into one message that
names the file and the dotted field path. Paths inside the config are relative to its file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from core.errors import ConfigError
from core.io import safe_name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
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


class AdapterConfig(_Section):
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


class TaskColumns(_Section):
    """Which of a data file's columns hold the text, the optional second text and the label.
    Every other column is ignored (a note names them)."""

    text: str = Field("text", description="Column holding the text the prompt's {text} shows.")
    text_pair: str | None = Field(
        "text_pair",
        description="Column of the second text ({text_pair}); used when the file has it. "
        "null: none, even if the file has a text_pair column.",
    )
    label: str = Field("label", description="Column holding each row's label.")


class TaskSpec(_Section):
    """A task named in the config: a sample task by name, or a user's file with its prompt."""

    name: str
    path: str | None = Field(
        None, description="CSV/TSV/JSONL/Parquet file, task folder, or datasets path/id."
    )
    template: str | None = Field(None, description="Prompt with {text} and optional {text_pair}.")
    labels: dict[str, str] | None = Field(
        None, description="Label -> answer word (any number of tokens; one is cheapest)."
    )
    description: str | None = None
    columns: TaskColumns | None = Field(
        None, description="{text, text_pair, label}: the file's columns (default: so named)."
    )
    split: str | None = Field(
        None,
        description="One-file tasks: the column naming each row's split (train, val or test; "
        "also validation, dev). Without it the rows are split 60/15/25, stratified.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "task name")

    @field_validator("labels", mode="before")
    @classmethod
    def _label_keys(cls, v):
        # YAML reads `0: ' negative'` with an integer key: labels are compared as text
        if isinstance(v, dict):
            return {
                str(k): (str(w) if isinstance(w, int | float) and not isinstance(w, bool) else w)
                for k, w in v.items()
            }
        return v

    @model_serializer(mode="wrap")
    def _omit_unset_mapping(self, handler):
        # a snapshot without a mapping reads exactly as before the mapping existed (and still
        # parses in a process started before it)
        data = handler(self)
        for key in ("columns", "split"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class DataConfig(_Section):
    root: str = Field("tasks", description="Folder of task folders, relative to the config file.")
    max_train: int | None = Field(
        None, ge=1, description="Use at most this many train rows per task."
    )
    max_val: int | None = Field(None, ge=1, description="At most this many val rows per task.")
    max_test: int | None = Field(None, ge=1, description="At most this many test rows per task.")
    max_tokens: int = Field(128, ge=8, le=8192, description="Token budget of one prompt.")
    seed: int = Field(0, description="Seed of the row subsampling.")


# "auto" projection: exact B-gradients (identity, k = D) while D is at most IDENTITY_MAX_DIMS;
# above it a store row (4·D bytes per answer word) and the replay's steps (O(D)) grow past a
# laptop's budget, and a CountSketch of AUTO_SKETCH_K dimensions is used instead
# (bench/scaling.py: store bytes per row and replay seconds against D; bench/agreement.py:
# what the sketch costs in agreement).
IDENTITY_MAX_DIMS = 65_536
AUTO_SKETCH_K = 4096
PROJECTIONS = ("auto", "identity", "countsketch", "rademacher")


class FeaturesConfig(_Section):
    target: Literal["choices", "vocab"] = Field(
        "choices",
        description="h = log-odds of the gold answer among the task's answer words (choices) "
        "or over the full vocabulary (vocab, as in the paper).",
    )
    projection: Literal[PROJECTIONS] = Field(
        "auto",
        description="auto: exact B-gradients (identity, k = D) up to D = 65,536 B entries, "
        "else a CountSketch of k = 4096; identity: always exact (the replay is then AdamW on "
        "the real B weights); countsketch, rademacher: a JL sketch of k dimensions.",
    )
    k: int | None = Field(
        None,
        ge=1,
        description="Sketch dimension (countsketch, rademacher; None: 4096). Identity ignores it.",
    )
    seed: int = Field(
        0, description="Projection seed (the projection is regenerated, never stored)."
    )
    batch_size: int = Field(16, ge=1)

    def resolved(self, dims: int) -> tuple[str, int | None]:
        """(kind, k) for an adapter of `dims` B entries: what "auto" and a missing k mean.
        Deterministic in the model and adapter, which a feature store's key already holds."""
        kind = self.projection
        if kind == "auto":
            kind = "identity" if dims <= IDENTITY_MAX_DIMS else "countsketch"
        return kind, None if kind == "identity" else (self.k or AUTO_SKETCH_K)


class EstimatorConfig(_Section):
    method: Literal["replay", "argmin"] = Field(
        "replay",
        description="replay: the training recipe (batches, AdamW, lr curve, epochs, best-epoch "
        "rule) replayed on the linearised model (core.estimate.replay; bench/agreement.py); argmin: the "
        "paper's regularised fit with a trust region (reg, max_norm).",
    )
    reg: float | None = Field(
        None,
        gt=0,
        description="L2 strength lambda. None: calibrated so the update norm equals max_norm.",
    )
    max_norm: float = Field(
        0.1,
        gt=0,
        description="argmin only: the fitted update's norm ‖w‖ is capped at this value.",
    )
    orders: int = Field(
        8,
        ge=1,
        le=256,
        description="replay only: batch orders (training seeds no real run uses) the replay is "
        "averaged over, so the estimate is of the expected fine-tune, not of one seed's run "
        "(bench/agreement.py).",
    )
    subsets: int = Field(30, ge=1, description="K: number of sampled subsets.")
    subset_size: int = Field(3, ge=2, description="Tasks per sampled subset.")
    pairs: bool = Field(False, description="Score all pairs instead of sampling subsets.")
    metric: Literal["loss", "accuracy"] = Field("loss")
    seed: int = Field(0)


class GroupingConfig(_Section):
    method: str = Field(
        "sdp",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="A name in core.grouping.methods: sdp, spectral (both swept for every m) "
        "or random (a control: needs m).",
    )
    m: int | None = Field(
        None, ge=1, description="Number of groups (None: recommended from the sweep)."
    )
    seed: int = Field(0)


class TrainingConfig(_Section):
    epochs: int = Field(
        10, ge=1, description="Maximum epochs (the paper trains 10 and keeps the best)."
    )
    patience: int | None = Field(
        2,
        ge=1,
        description="Stop after this many epochs without a better mean val NLL (early "
        "stopping; the same rule for groups and baseline). None: run every epoch.",
    )
    lr: float = Field(5e-4, gt=0)
    loss: Literal["choices", "vocab"] = Field(
        "choices",
        description="Cross-entropy of the gold answer over the task's answer words (choices: "
        "what the features and the estimator model) or over the full vocabulary (vocab).",
    )
    freeze_a: bool = Field(
        True,
        description="Keep the LoRA A matrices at their seeded init and train B only (LoRA-FA): "
        "the estimator's model family. False trains A too (plain LoRA).",
    )
    batch_size: int = Field(8, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(0)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    mix: dict[str, float] = Field(
        default_factory=dict,
        description="Sampling weight per task (default 1): an adapter's epoch keeps its row "
        "count and gives task t the share n_t·w_t / Σ n·w of it, so weights trade rows between "
        "tasks. Empty or equal weights: each task's rows once (core.recipe.epoch_plan).",
    )

    @field_validator("mix")
    @classmethod
    def _mix_weights(cls, v: dict) -> dict:
        bad = {t: w for t, w in v.items() if not (w >= 0 and w < float("inf"))}
        if bad:
            raise ValueError(f"weights must be finite and >= 0, got {bad}")
        return v


class EnsembleConfig(_Section):
    weights: Literal["own", "fit"] = Field(
        "fit",
        description="fit: per-task weights over every group adapter, fitted on val (never worse "
        "than own there, pruned below 1e-3); own: each task uses its group's adapter only.",
    )
    boosting: int = Field(
        1,
        ge=0,
        le=32,
        description="b: boosting rounds after the group adapters, each a new adapter on the "
        "group the ensemble gets most wrong on its train rows (core.ensemble.boosting).",
    )
    boosting_method: Literal["auto", "features", "train"] = Field(
        "auto",
        description="features: fitted on the stored gradient features by the estimator's "
        "replay, no training; train: a real fine-tune on the ensemble's residual; auto: "
        "features when features.target is choices, else train.",
    )


MODEL_STEPS = ("gradients", "train", "boost", "evaluate")  # the steps that run the model
JOB_STEPS = ("gradients", "affinity", "group", *MODEL_STEPS[1:], "report")


class StepResources(_Section):
    cpus: float = Field(1, gt=0, description="CPUs per job (also its torch threads).")
    gpus: float = Field(0, ge=0, description="GPUs per job; a fraction shares one.")
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources per job, e.g. {accelerator_type:A100: 0.001} or a "
        "resource your nodes declare (ray start --resources); the local backend ignores them.",
    )


class JobsConfig(_Section):
    resources: dict[Literal[JOB_STEPS], StepResources] = Field(
        default_factory=dict,
        description="What each step's jobs ask of the backend, by step (gradients, affinity, "
        "group, train, boost, evaluate, report). Unset: 1 CPU, and 1 GPU for the model steps "
        "(gradients, train, boost, evaluate) when the machine or the Ray cluster has GPUs.",
    )
    reuse_workers: bool = Field(
        False,
        description="Local backend: a worker that finishes a job runs the next ready job of "
        "the workspace itself, so the chain pays process start and imports once. Off: one "
        "fresh process per job, the robust default (nothing a step leaves in memory lasts).",
    )


class ExperimentConfig(_Section):
    name: str = Field("experiment", description="Experiment name (a folder name).")
    model: ModelConfig = ModelConfig()
    adapter: AdapterConfig = AdapterConfig()
    data: DataConfig = DataConfig()
    tasks: list[TaskSpec] = Field(..., min_length=1)
    features: FeaturesConfig = FeaturesConfig()
    estimator: EstimatorConfig = EstimatorConfig()
    grouping: GroupingConfig = GroupingConfig()
    training: TrainingConfig = TrainingConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    jobs: JobsConfig = JobsConfig()
    base_dir: str = Field(
        ".", description="Folder relative paths are resolved against (set on load)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "experiment name")

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_strings(cls, v):
        if isinstance(v, list):
            return [{"name": t} if isinstance(t, str) else t for t in v]
        return v

    @model_validator(mode="after")
    def _unique_tasks(self):
        seen = set()
        for i, t in enumerate(self.tasks):
            if t.name in seen:
                raise ValueError(f"duplicate task name {t.name!r} (tasks[{i}])")
            seen.add(t.name)
        return self

    @model_validator(mode="after")
    def _mix_names_tasks(self):
        unknown = sorted(set(self.training.mix) - set(self.task_names))
        if unknown:
            raise ValueError(f"training.mix names task(s) {unknown} that are not in tasks")
        return self

    @model_validator(mode="after")
    def _replay_objective(self):
        if self.estimator.method == "replay" and self.features.target != self.training.loss:
            raise ValueError(
                f"estimator.method 'replay' replays the training loss on the features, so "
                f"features.target ({self.features.target!r}) must equal training.loss "
                f"({self.training.loss!r})"
            )
        return self

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def resolve(self, path: str | Path) -> Path:
        """A path from the config, resolved against the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p)

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude={"base_dir"})
        return yaml.safe_dump(data, sort_keys=False)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"field '{loc}': {e['msg']}")
    return "; ".join(lines)


def parse_config(
    data: dict, *, source: str = "<config>", base_dir: str | Path = "."
) -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return ExperimentConfig.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as err:
        raise ConfigError(f"{source}: {_format_errors(err)}") from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Load and validate a YAML experiment config. Errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    base = path.resolve().parent
    if isinstance(data, dict) and data.get(
        "base_dir"
    ):  # a workspace snapshot says where it resolves
        base = (base / str(data.pop("base_dir"))).resolve()
    return parse_config(data, source=str(path), base_dir=base)
