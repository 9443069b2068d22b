"""Tasks: labelled rows with a prompt template and one answer word per label.

A task (core.data.sources loads one) comes from a task folder (task.yaml + train/val/test.jsonl, the sample format), from a
user's CSV, TSV, JSONL or Parquet file (core.data.tables reads it), or from a `datasets` dataset (a
folder made by `save_to_disk`, or `hf:<name>[:<config>]` when online). Wherever a task is
defined, `columns` says which of the data's columns are the text, text_pair and label (default:
the columns so named; core.data.columns maps them, other columns are ignored with a note), and a
one-file task may name a `split` column. Rows are plain dicts {"text", "text_pair"?, "label"}.
Tokenizer-dependent work lives in core.data.prompts and core.data.tokens.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

from core.data.tables import decode, read_table
from core.errors import DataError

log = logging.getLogger("grouptune.tasks")


SPLITS = ("train", "val", "test")


COLUMNS = {"text", "label"}


OPTIONAL_COLUMNS = {"text_pair"}


DEFAULT_TEMPLATE = "Text: {text}\nAnswer:"


DEFAULT_PAIR_TEMPLATE = "Text: {text}\nSecond text: {text_pair}\nAnswer:"


@dataclass
class Task:
    name: str
    template: str
    labels: dict[str, str]  # label -> answer word (a single token, checked by core.data.prompts)
    splits: dict[str, list[dict]] = field(default_factory=dict)
    description: str = ""
    source: str = ""
    license: str = ""
    notes: list[str] = field(default_factory=list)  # what loading it ignored or found odd

    @property
    def label_names(self) -> list[str]:
        return list(self.labels)

    @property
    def answer_words(self) -> list[str]:
        return list(self.labels.values())

    def rows(self, split: str) -> list[dict]:
        return self.splits.get(split, [])

    def gold(self, split: str) -> list[int]:
        """Index of each row's label in `label_names`."""
        index = {lab: i for i, lab in enumerate(self.labels)}
        return [index[r["label"]] for r in self.rows(split)]

    def render(self, row: dict) -> str:
        return render_template(self.template, row)

    def content_hash(self) -> str:
        """sha256 of everything that changes a prompt or a gold label (cache key)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.template, self.labels], sort_keys=True).encode())
        for split in SPLITS:
            h.update(split.encode())
            for row in self.rows(split):
                h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        return h.hexdigest()[:16]


def content_hashes(tasks) -> dict[str, str]:
    """task name -> Task.content_hash(): what adapters and evaluations are fingerprinted on."""
    return {t.name: t.content_hash() for t in tasks}


TEMPLATE_FIELDS = ("text", "text_pair")


@functools.lru_cache(maxsize=256)
def template_parts(template: str) -> tuple[tuple[str, str | None], ...]:
    """(literal, field) pieces of a prompt template. Only plain {text} and {text_pair} are
    fields: attribute or index access ({text.__class__}, {text[0]}), conversions (!r) and
    format specs are refused with ValueError, so a user's template reads nothing but the row's
    text. {{ and }} are literal braces."""
    parts = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        if name is not None and (name not in TEMPLATE_FIELDS or spec or conversion):
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(
                f"{{{shown}}} is not allowed (only plain {{text}} and {{text_pair}}; no "
                "attributes, indexes, conversions or format specs)"
            )
        parts.append((literal, name))
    return tuple(parts)


def render_template(template: str, row: dict) -> str:
    """The template with the row's text fields filled in (never str.format on user input)."""
    return "".join(
        literal + (str(row.get(name) or "") if name else "")
        for literal, name in template_parts(template)
    )


def check_template(template: str, source) -> None:
    try:
        template_parts(template)
    except ValueError as err:
        raise DataError(
            f"template must use only {{text}} and {{text_pair}} (problem: {err})",
            file=source,
            field="template",
        ) from None
    if "{text}" not in template:
        raise DataError("template must contain {text}", file=source, field="template")


def check_labels(labels, source) -> dict[str, str]:
    if not isinstance(labels, dict) or len(labels) < 2:
        raise DataError(
            "needs a mapping of at least two labels to answer words", file=source, field="labels"
        )
    out = {str(k): str(v) for k, v in labels.items()}
    words = list(out.values())
    dupes = {w for w in words if words.count(w) > 1}
    if dupes:
        raise DataError(
            f"answer words must differ, repeated: {sorted(dupes)}", file=source, field="labels"
        )
    return out


def check_rows(
    rows: list[dict], labels: dict[str, str], source, split: str = "", names: dict | None = None
) -> list[dict]:
    """Validate rows: required columns, no extra ones, non-empty text, known labels. `names`
    (task field -> the file's column) makes errors name the user's own columns."""
    where = f"{source} [{split}]" if split else source
    names = names or {}
    if not rows:
        raise DataError("no rows", file=where)
    clean = []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"expected an object, got {type(row).__name__}", file=where, row=i)
        keys = set(row)
        missing = COLUMNS - keys
        if missing:
            raise DataError(
                f"missing column(s) {sorted(missing)}", file=where, row=i, field=sorted(missing)[0]
            )
        extra = keys - COLUMNS - OPTIONAL_COLUMNS
        if extra:
            raise DataError(
                f"unexpected column(s) {sorted(extra)}; allowed: text, text_pair, label",
                file=where,
                row=i,
                field=sorted(extra)[0],
            )
        text = row["text"]
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                "empty or non-text value", file=where, row=i, field=names.get("text", "text")
            )
        label = "" if row["label"] is None else str(row["label"]).strip()
        if label not in labels:
            raise DataError(
                f"label {label!r} is not in the answer map {sorted(labels)}"
                if label
                else "empty label: fill it in, or delete the row",
                file=where,
                row=i,
                field=names.get("label", "label"),
            )
        out = {"text": text.strip(), "label": label}
        if row.get("text_pair") not in (None, ""):
            out["text_pair"] = str(row["text_pair"]).strip()
        clean.append(out)
    return clean


def read_bytes_text(path: Path) -> str:
    return decode(Path(path).read_bytes(), path)


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV (a .tsv: tab-separated), an empty text_pair cell left out."""
    rows = read_table(path).rows
    return [{k: v for k, v in r.items() if not (k == "text_pair" and v == "")} for r in rows]


def split_rows(
    rows: list[dict], seed: int = 0, fractions=(0.6, 0.15, 0.25)
) -> dict[str, list[dict]]:
    """Stratified, seeded split of one file's rows into train / val / test."""
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    rng = random.Random(seed)
    out = {s: [] for s in SPLITS}
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n_train = round(len(group) * fractions[0])
        n_val = round(len(group) * fractions[1])
        out["train"] += group[:n_train]
        out["val"] += group[n_train : n_train + n_val]
        out["test"] += group[n_train + n_val :]
    for split in SPLITS:
        rng.shuffle(out[split])
    return out


def answer_word_overlaps(tasks: list[Task]) -> list[tuple[str, str, list[str]]]:
    """Pairs of tasks sharing answer words: their affinity is partly a shared-format effect."""
    out = []
    for i, a in enumerate(tasks):
        for b in tasks[i + 1 :]:
            shared = sorted(set(a.answer_words) & set(b.answer_words))
            if shared:
                out.append((a.name, b.name, shared))
    return out
