"""Rows to predict on: a user's file (any table the Datasets page reads) or typed texts, read
with the task's own column mapping; the label is optional (when given, accuracy is reported).

A column is found under the task's mapped name ('tweet') or the plain one ('text'), so a file
in the task's own format and one in the sample format both work. Errors name the file, the row
(1-based, as core.data.tables counts) and the column.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from core.config import TaskColumns
from core.data.columns import label_text
from core.data.tables import Table, read_table
from core.data.tasks import Task, template_parts
from core.errors import DataError


def needs_pair(task: Task) -> bool:
    """True when the task's template shows a second text ({text_pair})."""
    return any(name == "text_pair" for _, name in template_parts(task.template))


def task_columns(cfg, name: str) -> TaskColumns:
    """The task's column mapping: the config's `columns`, else its task folder's task.yaml
    `columns`, else the plain names."""
    spec = next((s for s in cfg.tasks if s.name == name), None)
    if spec is not None and spec.columns is not None:
        return spec.columns
    if spec is not None and not (spec.path or "").startswith("hf:"):
        meta = cfg.resolve(spec.path or str(Path(cfg.data.root) / spec.name)) / "task.yaml"
        if meta.is_file():
            entry = (yaml.safe_load(meta.read_text(encoding="utf-8")) or {}).get("columns")
            if entry:
                return TaskColumns.model_validate(entry)
    return TaskColumns()


def _column(table: Table, mapped: str | None, plain: str) -> str | None:
    for name in (mapped, plain):
        if name and name in table.columns:
            return name
    return None


def table_inputs(table: Table, task: Task, columns: TaskColumns) -> list[dict]:
    """Rows {"text", "text_pair"?, "label"?} of `table` for `task`. Labels are kept when the
    file has a label column; a label cell must then be one of the task's labels (or empty)."""
    text = _column(table, columns.text, "text")
    pair = _column(table, columns.text_pair, "text_pair")
    label = _column(table, columns.label, "label")
    if text is None:
        raise DataError(
            f"no text column: the task reads {columns.text!r} (or 'text'); the file's columns "
            f"are {table.columns}",
            file=table.source,
            field=columns.text,
        )
    if needs_pair(task) and pair is None:
        raise DataError(
            f"no second-text column: task {task.name!r} reads {columns.text_pair!r} (or "
            f"'text_pair'); the file's columns are {table.columns}",
            file=table.source,
            field=columns.text_pair or "text_pair",
        )
    rows = []
    for i, raw in enumerate(table.rows, start=1):
        row = {"text": _cell(raw, text, table.source, i)}
        if needs_pair(task):
            row["text_pair"] = _cell(raw, pair, table.source, i)
        if label is not None and (value := label_text(raw.get(label))):
            if value not in task.labels:
                raise DataError(
                    f"label {value!r} is not one of the task's labels {list(task.labels)}",
                    file=table.source,
                    row=i,
                    field=label,
                )
            row["label"] = value
        rows.append(row)
    if not rows:
        raise DataError("no rows", file=table.source)
    return rows


def _cell(raw: dict, column: str, source, row: int) -> str:
    value = raw.get(column)
    if value is None:
        raise DataError("missing: the row has no value here", file=source, row=row, field=column)
    if not isinstance(value, str) or not value.strip():
        raise DataError("empty or non-text value", file=source, row=row, field=column)
    return value.strip()


def file_inputs(path: str | Path, task: Task, columns: TaskColumns) -> list[dict]:
    """The rows of a CSV/TSV/JSONL/JSON/Parquet file for `task` (see `table_inputs`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=path)
    return table_inputs(read_table(path), task, columns)


def text_inputs(task: Task, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
    """Typed texts as rows; `pairs` gives each its second text (tasks with {text_pair})."""
    pairs = pairs or []
    if pairs and len(pairs) != len(texts):
        raise DataError(
            f"{len(texts)} text(s) but {len(pairs)} second text(s)", field="--text-pair"
        )
    if needs_pair(task) and not pairs:
        raise DataError(
            f"task {task.name!r} compares two texts: give --text-pair for each text",
            field="--text-pair",
        )
    rows = []
    for i, text in enumerate(texts, start=1):
        row = {"text": _cell({"text": text}, "text", "the text argument", i)}
        if pairs:
            row["text_pair"] = _cell({"text_pair": pairs[i - 1]}, "text_pair", "--text-pair", i)
        rows.append(row)
    return rows
