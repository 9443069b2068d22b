"""From a user's table to task rows: which column is the text, the second text, the label and
the split; every other column is ignored with a note; suggested answer words for the labels.

Rows come out as {"text", "text_pair"?, "label"} with the values as the file has them (core.data.tasks
.check_rows strips and checks them). Errors name the file's own column ('tweet', not 'text').
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from core.config import TaskColumns
from core.data.tables import Table
from core.errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_VALUES = {"train": "train", "val": "val", "validation": "val", "valid": "val"}
SPLIT_VALUES |= {"dev": "val", "test": "test"}
# columns a label usually sits in, and a text, when the file does not say (first found wins)
LABEL_NAMES = ("label", "labels", "gold", "class", "category", "target", "y", "sentiment")
PAIR_NAMES = {"premise": "hypothesis", "sentence1": "sentence2", "question": "passage"}
_INT = re.compile(r"^-?\d+$")


@dataclass
class Mapped:
    """Task rows of one table; `split_of[i]` is row i's split when the table has a split column."""

    rows: list[dict]
    split_of: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # task field -> the file's column


def label_text(value) -> str:
    """A label cell as text ('' for a missing one: null, NaN), as core.data.tasks.check_rows reads it."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


def _need(column: str, table: Table, key: str) -> None:
    if column not in table.columns:
        shown = ", ".join(repr(c) for c in table.columns)
        raise DataError(
            f"missing column(s) [{column!r}] (the {key}); the file's columns are {shown}: map "
            f"one of them with columns: {{{key}: <column>}}, or rename it",
            file=table.source,
            field=f"columns.{key}" if key != "split" else "split",
        )


def map_rows(table: Table, columns: TaskColumns | None = None, split: str | None = None) -> Mapped:
    """Pick the mapped columns of every row (default: the columns named text, text_pair, label)."""
    cols = columns or TaskColumns()
    _need(cols.text, table, "text")
    _need(cols.label, table, "label")
    pair = cols.text_pair if cols.text_pair in table.columns else None
    if cols.text_pair not in (None, "text_pair") and pair is None:
        _need(cols.text_pair, table, "text_pair")
    if split is not None:
        _need(split, table, "split")
    names = {"text": cols.text, "label": cols.label, **({"text_pair": pair} if pair else {})}
    used = {*names.values(), split}
    if len(used - {None}) < len(names) + (split is not None):
        raise DataError(
            f"one column is mapped twice ({names}, split {split!r}): map each to its own",
            file=table.source,
            field="columns",
        )
    rows, split_of = [], [] if split is not None else None
    for i, raw in enumerate(table.rows, start=1):
        missing = [c for c in (cols.text, cols.label) if c not in raw]
        if missing:
            raise DataError(
                f"missing column(s) {missing}", file=table.source, row=i, field=missing[0]
            )
        row = {"text": raw[cols.text], "label": label_text(raw[cols.label])}
        if not row["label"]:
            raise DataError(
                "empty label: fill it in, or delete the row", file=table.source, row=i,
                field=cols.label,
            )  # fmt: skip
        if pair is not None and raw.get(pair) not in (None, ""):
            row["text_pair"] = raw[pair]
        if split_of is not None:
            split_of.append(_split_value(raw.get(split), table.source, i, split))
        rows.append(row)
    extra = [c for c in table.columns if c not in used]
    notes = []
    if extra:
        notes.append(
            f"ignored column(s) {', '.join(repr(c) for c in extra)}: not mapped to text, "
            "text_pair, label or split"
        )
    return Mapped(rows, split_of, notes, names)


def _split_value(value, source, row: int, column: str) -> str:
    split = SPLIT_VALUES.get(str(value if value is not None else "").strip().lower())
    if split is None:
        raise DataError(
            f"split {value!r} is not train, val or test (also accepted: validation, dev)",
            file=source,
            row=row,
            field=column,
        )
    return split


def split_by_column(rows: list[dict], split_of: list[str], source, column: str) -> dict:
    """Rows per split as the split column says (file order kept); every split needs rows."""
    splits = {s: [r for r, s_ in zip(rows, split_of, strict=True) if s_ == s] for s in SPLITS}
    for split, part in splits.items():
        if not part:
            raise DataError(
                f"no {split} rows: the split column needs train, val and test rows",
                file=source,
                field=column,
            )
    return splits


def rare_label_notes(train: list[dict], labels: dict[str, str]) -> list[str]:
    """A label with one train row (or none) is a note, not an error: long-tail classes are real
    data and every step still runs (the word stays a choice), but one example is too few to
    learn it, and split 60/15/25 a label needs 4 rows to reach both val and test."""
    counts = label_counts(train)
    notes = []
    for label in labels:
        n = counts.get(label, 0)
        if n <= 1:
            notes.append(
                f"label {label!r} has {'one train row' if n else 'no train rows'}: too few to "
                "learn it, and its val/test scores will be noise; add rows, or merge it into "
                "another label"
            )
    return notes


# --- guesses for a file nobody has described yet -------------------------------------------
def guess_columns(table: Table) -> dict[str, str | None]:
    """{text, text_pair, label} columns for a new file: the usual names first; else the label
    is the column with the fewest distinct values (at least 2) and the text the longest one."""
    lower = {c.lower(): c for c in table.columns}
    label = next((lower[n] for n in LABEL_NAMES if n in lower), None)
    sample = table.rows[:500]
    if label is None:
        counts = {c: len({label_text(r.get(c)) for r in sample}) for c in table.columns}
        usable = [c for c in table.columns if counts[c] >= 2]
        label = min(usable, key=counts.get) if usable else table.columns[-1]
    text = lower.get("text")
    if text is None:
        lengths = {
            c: sum(len(v) for r in sample if isinstance(v := r.get(c), str)) / max(len(sample), 1)
            for c in table.columns
            if c != label
        }
        text = max(lengths, key=lengths.get) if lengths else table.columns[0]
    pair = lower.get("text_pair")
    if pair is None and text.lower() in PAIR_NAMES:
        pair = lower.get(PAIR_NAMES[text.lower()])
    return {"text": text, "text_pair": pair, "label": label}


def label_counts(rows: list[dict]) -> dict[str, int]:
    """Rows per label, most frequent first (ties in label order)."""
    counts = Counter(r["label"] for r in rows)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def suggest_answer_words(
    labels: list[str], table: Table | None = None, label_column: str | None = None
) -> dict[str, str]:
    """Label -> answer word: ' ' + the label, or, for integer labels, ' ' + the name an
    obvious names column gives it (a column whose value is the same for every row of a label
    and differs between labels, e.g. label_text next to label)."""
    names = _label_names(labels, table, label_column) if table is not None else None
    return {lab: f" {(names or {}).get(lab, lab)}" for lab in labels}


def _label_names(labels, table: Table, label_column) -> dict[str, str] | None:
    if not labels or not all(_INT.match(lab) for lab in labels) or label_column is None:
        return None
    per_label = Counter(label_text(r.get(label_column)) for r in table.rows)
    if min(per_label.get(lab, 0) for lab in labels) < 2:  # one row per label: any column fits
        return None
    for column in table.columns:
        if column == label_column:
            continue
        seen: dict[str, set] = {}
        for r in table.rows:
            seen.setdefault(label_text(r.get(label_column)), set()).add(r.get(column))
        values = [next(iter(v)) for v in seen.values() if len(v) == 1]
        named = len(values) == len(seen) and all(
            isinstance(v, str) and v.strip() and not _INT.match(v.strip()) for v in values
        )
        if named and len({v.strip() for v in values}) == len(values):
            return {lab: next(iter(vals)).strip() for lab, vals in seen.items()}
    return None
