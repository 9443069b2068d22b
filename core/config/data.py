"""tasks: and data: — which tasks, read from which files with which prompt, capped how."""

from __future__ import annotations

from pydantic import Field, field_validator, model_serializer

from core.config.section import Section
from core.io import safe_name


class TaskColumns(Section):
    """Which of a data file's columns hold the text, the optional second text and the label.
    Every other column is ignored (a note names them)."""

    text: str = Field("text", description="Column holding the text the prompt's {text} shows.")
    text_pair: str | None = Field(
        "text_pair",
        description="Column of the second text ({text_pair}); used when the file has it. "
        "null: none, even if the file has a text_pair column.",
    )
    label: str = Field("label", description="Column holding each row's label.")


class TaskSpec(Section):
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


class DataConfig(Section):
    root: str = Field("tasks", description="Folder of task folders, relative to the config file.")
    max_train: int | None = Field(
        None, ge=1, description="Use at most this many train rows per task."
    )
    max_val: int | None = Field(None, ge=1, description="At most this many val rows per task.")
    max_test: int | None = Field(None, ge=1, description="At most this many test rows per task.")
    max_tokens: int = Field(128, ge=8, le=8192, description="Token budget of one prompt.")
    seed: int = Field(0, description="Seed of the row subsampling.")
