"""The Datasets page's upload form, as plain functions the page renders (no Streamlit here).

An uploaded file is read in memory (core.data.tables), its columns and first rows previewed, its
text / text_pair / label / split columns guessed (core.data.columns), the label column's counts
shown, and a draft task built with the user's template and answer words: one rendered prompt
and its token count (core.data.tokens, no torch) before anything is saved. Nothing here writes;
core.views.datasets.save_upload stores the file only once its draft task loads.
"""

from __future__ import annotations

import pandas as pd
from pydantic import ValidationError

from core.config import TaskSpec
from core.data.columns import guess_columns, label_text, suggest_answer_words
from core.data.sources import task_from_table
from core.data.tables import Table, parse_table
from core.data.tasks import DEFAULT_PAIR_TEMPLATE, DEFAULT_TEMPLATE, Task
from core.data.tokens import encode, local_tokenizer
from core.errors import DataError

PREVIEW_ROWS = 8


def read_upload(filename: str, data: bytes) -> Table:
    """The uploaded file as a table (DataError naming the file and row when it does not parse)."""
    return parse_table(data, filename, source=filename)


def preview_frame(table: Table, n: int = PREVIEW_ROWS) -> pd.DataFrame:
    """The first n rows, every column, as the file has them (as text, so any mix shows)."""
    rows = [{c: _cell(r.get(c)) for c in table.columns} for r in table.rows[:n]]
    return pd.DataFrame(rows, columns=table.columns)


def _cell(value) -> str:
    return "" if value is None else str(value)


def label_table(table: Table, column: str) -> pd.DataFrame:
    """Rows per value of `column` (the would-be labels), most frequent first: label, rows."""
    counts = pd.Series([label_text(r.get(column)) or "(empty)" for r in table.rows]).value_counts()
    frame = counts.rename_axis("label").reset_index(name="rows")
    return frame.sort_values(["rows", "label"], ascending=[False, True], ignore_index=True)


def guesses(table: Table) -> dict[str, str | None]:
    """Columns to preselect: {text, text_pair, label, split} (split: a column named split)."""
    split = next((c for c in table.columns if c.lower() == "split"), None)
    return {**guess_columns(table), "split": split}


def default_template(text_pair: str | None) -> str:
    return DEFAULT_PAIR_TEMPLATE if text_pair else DEFAULT_TEMPLATE


def suggested_words(table: Table, label_column: str, model: str) -> dict[str, str]:
    """Label -> answer word to prefill: ' ' + label (or its name, core.data.columns), and when the
    model's tokenizer is here and that is not one token but the bare word is (' 0' is two
    tokens for SmolLM2, '0' one), the bare word."""
    labels = sorted({label_text(r.get(label_column)) for r in table.rows} - {""})
    words = suggest_answer_words(labels, table, label_column)
    tok = local_tokenizer(model)
    if tok is None:
        return words
    for label, word in words.items():
        if len(encode(tok, word)) != 1 and len(encode(tok, word.strip())) == 1:
            words[label] = word.strip()
    return words


def draft_spec(name: str, choice: dict, template: str, labels: dict[str, str]) -> TaskSpec:
    """The config entry the form describes. choice: {text, text_pair, label, split} columns
    (text_pair, split: None for none)."""
    columns = {
        "text": choice["text"],
        "text_pair": choice.get("text_pair"),
        "label": choice["label"],
    }
    try:
        return TaskSpec(
            name=name or "upload",
            columns=columns,
            split=choice.get("split"),
            template=template,
            labels=labels,
        )
    except ValidationError as err:
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise DataError(f"the form does not describe a task ({why})") from None


def config_entry(spec: TaskSpec, filename: str) -> str:
    """The same task as an entry of a config's `tasks:` list (the form's CLI twin: put it in a
    config next to the file and run `grouptune init --config CONFIG`)."""
    import yaml

    entry = spec.model_dump(mode="json", exclude_none=True)
    if spec.columns is not None:  # text_pair: null means none, even if a text_pair column exists
        entry["columns"] = spec.columns.model_dump(mode="json")
    entry = {"name": entry.pop("name"), "path": filename, **entry}
    return yaml.safe_dump([entry], sort_keys=False, allow_unicode=True)


def draft_task(table: Table, spec: TaskSpec) -> Task:
    """The task the form would save, built in memory (raises DataError as loading it would)."""
    return task_from_table(table, spec)


def example(task: Task, model: str) -> dict:
    """The first train row's prompt and token counts for `model` (None: tokenizer not here):
    {"prompt", "tokens", "words": {label: (answer word, tokens)}}."""
    prompt = task.render(task.rows("train")[0])
    tok = local_tokenizer(model)
    count = (lambda text: len(encode(tok, text))) if tok is not None else (lambda text: None)
    return {
        "prompt": prompt,
        "tokens": count(prompt),
        "words": {label: (word, count(word)) for label, word in task.labels.items()},
    }
