"""Tasks: labelled rows with a prompt template and one answer word per label.

A task is loaded from a task folder (task.yaml + train/val/test.jsonl, the sample format), from a
user's CSV, TSV, JSONL or Parquet file (core.tables reads it), or from a `datasets` dataset (a
folder made by `save_to_disk`, or `hf:<name>[:<config>]` when online). Wherever a task is
defined, `columns` says which of the data's columns are the text, text_pair and label (default:
the columns so named; core.columns maps them, other columns are ignored with a note), and a
one-file task may name a `split` column. Rows are plain dicts {"text", "text_pair"?, "label"}.
Tokenizer-dependent work lives in core.prompts and core.tokens.
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

import yaml
from pydantic import ValidationError

from core.columns import map_rows, rare_label_notes, split_by_column, suggest_answer_words
from core.config import ExperimentConfig, TaskColumns, TaskSpec
from core.errors import DataError
from core.io import safe_name
from core.tables import Table, decode, parse_table, read_table

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
    labels: dict[str, str]  # label -> answer word (a single token, checked by core.prompts)
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


# --- templates -------------------------------------------------------------------------------
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


# --- validation ------------------------------------------------------------------------------
def _check_template(template: str, source) -> None:
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


def _check_labels(labels, source) -> dict[str, str]:
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


# --- readers (core.tables does the reading) ---------------------------------------------------
def _read_bytes_text(path: Path) -> str:
    return decode(Path(path).read_bytes(), path)


def read_jsonl(path: Path) -> list[dict]:
    return parse_table(Path(path).read_bytes(), "rows.jsonl", source=path).rows


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV (a .tsv: tab-separated), an empty text_pair cell left out."""
    rows = read_table(path).rows
    return [{k: v for k, v in r.items() if not (k == "text_pair" and v == "")} for r in rows]


def read_rows(path: Path) -> list[dict]:
    return read_table(path).rows


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


# --- loaders ----------------------------------------------------------------------------------
def _columns(value, source) -> TaskColumns | None:
    """A task.yaml's `columns` entry, checked like the config's."""
    if value is None or isinstance(value, TaskColumns):
        return value
    try:
        return TaskColumns.model_validate(value)
    except ValidationError as err:
        why = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'columns'}: {e['msg']}" for e in err.errors()
        )
        raise DataError(f"invalid column mapping ({why})", file=source, field="columns") from None


def _log_notes(task: Task, where) -> Task:
    for note in task.notes:
        log.warning("%s (task %s): %s", where, task.name, note)
    return task


def load_task_folder(folder: Path, columns: TaskColumns | None = None) -> Task:
    """A task in the sample format: task.yaml + train/val/test.jsonl. `columns` (or task.yaml's
    own `columns` entry) maps the split files' columns."""
    meta_path = folder / "task.yaml"
    if not meta_path.is_file():
        raise DataError("task folder has no task.yaml", file=folder)
    try:
        meta = yaml.safe_load(_read_bytes_text(meta_path)) or {}
    except yaml.YAMLError as err:
        raise DataError(f"not valid YAML: {err}", file=meta_path) from None
    for key in ("name", "template", "labels"):
        if key not in meta:
            raise DataError("missing key", file=meta_path, field=key)
    name = safe_name(str(meta["name"]), "task name")
    _check_template(meta["template"], meta_path)
    labels = _check_labels(meta["labels"], meta_path)
    columns = columns or _columns(meta.get("columns"), meta_path)
    splits, notes = {}, []
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"missing {split} split", file=path)
        mapped = map_rows(read_table(path), columns)
        splits[split] = check_rows(mapped.rows, labels, path, names=mapped.names)
        notes += [f"{split}.jsonl: {n}" for n in mapped.notes]
    return _log_notes(
        Task(
            name=name,
            template=meta["template"],
            labels=labels,
            splits=splits,
            description=str(meta.get("description", "")),
            source=str(meta.get("source", "")),
            license=str(meta.get("license", "")),
            notes=notes + rare_label_notes(splits["train"], labels),
        ),
        folder,
    )


def task_from_table(table: Table, spec: TaskSpec, seed: int = 0) -> Task:
    """A task from one table: columns mapped, labels (given, or suggested from the data)
    checked, rows split by the split column or 60/15/25 (stratified, seeded)."""
    source = table.source
    mapped = map_rows(table, spec.columns, spec.split)
    labels = spec.labels or suggest_answer_words(
        sorted({r["label"] for r in mapped.rows}), table, mapped.names["label"]
    )
    labels = _check_labels(labels, source)
    rows = check_rows(mapped.rows, labels, source, names=mapped.names)
    has_pair = any("text_pair" in r for r in rows)
    template = spec.template or (DEFAULT_PAIR_TEMPLATE if has_pair else DEFAULT_TEMPLATE)
    _check_template(template, source)
    if mapped.split_of is None:
        splits = split_rows(rows, seed=seed)
    else:
        splits = split_by_column(rows, mapped.split_of, source, spec.split)
    return Task(
        name=spec.name,
        template=template,
        labels=labels,
        splits=splits,
        description=spec.description or f"user data from {Path(source).name}",
        source=source,
        notes=mapped.notes + rare_label_notes(splits["train"], labels),
    )


def load_task_file(path: Path, spec: TaskSpec, seed: int = 0) -> Task:
    """A user's CSV/TSV/JSONL/Parquet file: columns per `spec.columns` (default text, optional
    text_pair, label), split by `spec.split`'s column or 60/15/25."""
    return _log_notes(task_from_table(read_table(path), spec, seed=seed), path)


def load_hf_dataset(ref: str, spec: TaskSpec, seed: int = 0) -> Task:
    """A `datasets` dataset: a save_to_disk folder, or `hf:name[:config]` from the Hub."""
    import datasets

    if ref.startswith("hf:"):
        name, _, config = ref[3:].partition(":")
        try:
            ds = datasets.load_dataset(name, config or None)
        except Exception as err:  # network, missing dataset, ...: one clear message
            raise DataError(
                f"could not load dataset {name!r} from the Hub: {err}", file=ref
            ) from None
    else:
        ds = datasets.load_from_disk(ref)
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"train": ds})
    cols = spec.columns or TaskColumns()
    label_names = None
    first = next(iter(ds.values()))
    feature = first.features.get(cols.label)
    if isinstance(feature, datasets.ClassLabel):
        label_names = feature.names

    def mapped_rows(d, split: str):
        keep = [c for c in (cols.text, cols.text_pair, cols.label) if c in d.column_names]
        rows = []
        for r in d.select_columns(keep):
            if label_names is not None and isinstance(r.get(cols.label), int):
                r[cols.label] = label_names[r[cols.label]]
            rows.append(r)
        return map_rows(Table(list(d.column_names), rows, f"{ref} [{split}]"), cols)

    all_mapped = {s: mapped_rows(d, s) for s, d in ds.items()}
    all_rows = {s: m.rows for s, m in all_mapped.items()}
    names = next(iter(all_mapped.values())).names
    seen = sorted({r["label"] for rs in all_rows.values() for r in rs})
    labels = _check_labels(spec.labels or {lab: f" {lab}" for lab in seen}, ref)
    split_names = {"validation": "val", "dev": "val"}
    named = {split_names.get(k, k): v for k, v in all_rows.items()}
    if all(s in named for s in SPLITS):
        splits = {s: check_rows(named[s], labels, ref, s, names=names) for s in SPLITS}
    else:
        rows = check_rows([r for rs in all_rows.values() for r in rs], labels, ref, names=names)
        splits = split_rows(rows, seed=seed)
    template = spec.template or DEFAULT_TEMPLATE
    _check_template(template, ref)
    notes = list(dict.fromkeys(n for m in all_mapped.values() for n in m.notes))
    notes += rare_label_notes(splits["train"], labels)
    return _log_notes(Task(spec.name, template, labels, splits, source=ref, notes=notes), ref)


def load_task(spec: TaskSpec, cfg: ExperimentConfig) -> Task:
    """Resolve a config task entry: preset, sample task by name, file, folder or dataset."""
    from core import presets

    if spec.path is None and spec.name in presets.PAPER_TASKS:
        return presets.load_paper_task(spec.name)
    ref = spec.path or str(Path(cfg.data.root) / spec.name)
    path = cfg.resolve(ref) if not ref.startswith("hf:") else None
    if spec.split is not None and (path is None or path.is_dir()):
        raise DataError(
            f"task {spec.name!r}: a split column is for one-file tasks; {ref} has its own "
            "splits (remove `split`)",
            field="split",
        )
    if path is None:
        return load_hf_dataset(ref, spec, seed=cfg.data.seed)
    if path.is_dir() and (path / "task.yaml").is_file():
        task = load_task_folder(path, spec.columns)
    elif path.is_dir() and any(
        (path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json")
    ):
        task = load_hf_dataset(str(path), spec, seed=cfg.data.seed)
    elif path.is_file():
        task = load_task_file(path, spec, seed=cfg.data.seed)
    else:
        raise DataError(
            f"task {spec.name!r} not found (looked for a task folder or file)", file=path
        )
    task.name = spec.name
    if spec.template:
        _check_template(spec.template, path)
        task.template = spec.template
    return task


def subsample(task: Task, cfg: ExperimentConfig) -> Task:
    """Cap rows per split (seeded, stratified order kept) as the config's data section asks."""
    caps = {"train": cfg.data.max_train, "val": cfg.data.max_val, "test": cfg.data.max_test}
    splits = {}
    for split, rows in task.splits.items():
        cap = caps.get(split)
        if cap is None or len(rows) <= cap:
            splits[split] = rows
            continue
        rng = random.Random(f"{cfg.data.seed}-{task.name}-{split}")
        idx = sorted(rng.sample(range(len(rows)), cap))
        splits[split] = [rows[i] for i in idx]
    return Task(**{**task.__dict__, "splits": splits})


def load_tasks(cfg: ExperimentConfig) -> list[Task]:
    """All tasks of an experiment, validated and subsampled; at least 2 labels and rows each."""
    tasks = []
    for spec in cfg.tasks:
        task = subsample(load_task(spec, cfg), cfg)
        for split in SPLITS:
            if not task.rows(split):
                raise DataError(f"task {task.name!r} has no {split} rows", field=split)
        if len({r["label"] for r in task.rows("train")}) < 2:
            raise DataError(
                f"task {task.name!r}: its train split has a single label", field="label"
            )
        tasks.append(task)
    return tasks


def answer_word_overlaps(tasks: list[Task]) -> list[tuple[str, str, list[str]]]:
    """Pairs of tasks sharing answer words: their affinity is partly a shared-format effect."""
    out = []
    for i, a in enumerate(tasks):
        for b in tasks[i + 1 :]:
            shared = sorted(set(a.answer_words) & set(b.answer_words))
            if shared:
                out.append((a.name, b.name, shared))
    return out
