"""The experiment config: one validated schema for every stage, loaded from YAML.

Every field carries help text; `load_config` turns pydantic's errors into one message that
names the file and the dotted field path. Paths inside the config are relative to its file.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from core.config.data import DataConfig, TaskColumns, TaskSpec
from core.config.jobs import JOB_STEPS, MODEL_STEPS, JobsConfig, StepResources
from core.config.method import (
    AUTO_SKETCH_K,
    IDENTITY_MAX_DIMS,
    PROJECTIONS,
    EstimatorConfig,
    FeaturesConfig,
    GroupingConfig,
)
from core.config.model import AdapterConfig, ModelConfig
from core.config.section import Section
from core.config.training import EnsembleConfig, TrainingConfig
from core.errors import ConfigError
from core.io import safe_name

__all__ = [
    "AUTO_SKETCH_K", "IDENTITY_MAX_DIMS", "JOB_STEPS", "MODEL_STEPS", "PROJECTIONS",
    "AdapterConfig", "DataConfig", "EnsembleConfig", "EstimatorConfig", "ExperimentConfig",
    "FeaturesConfig", "GroupingConfig", "JobsConfig", "ModelConfig", "StepResources",
    "TaskColumns", "TaskSpec", "TrainingConfig", "load_config", "parse_config",
]  # fmt: skip


class ExperimentConfig(Section):
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
