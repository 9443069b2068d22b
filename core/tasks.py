"""Tasks: labelled rows with a prompt template and one answer word per label.

A task is loaded from a task folder (task.yaml + train/val/test.jsonl, the sample format), from a
user's CSV or JSONL file (columns: text, optional text_pair, label), or from a `datasets` dataset
(a folder made by `save_to_disk`, or `hf:<name>[:<config>]` when online). Rows are plain dicts
{"text", "text_pair"?, "label"}. Tokenizer-dependent work lives in core.prompts.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.config import ExperimentConfig, TaskSpec
from core.errors import DataError
from core.io import safe_name

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


def check_rows(rows: list[dict], labels: dict[str, str], source, split: str = "") -> list[dict]:
    """Validate rows: required columns, no extra ones, non-empty text, known labels."""
    where = f"{source} [{split}]" if split else source
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
            raise DataError("empty or non-text value", file=where, row=i, field="text")
        label = str(row["label"]).strip()
        if label not in labels:
            raise DataError(
                f"label {label!r} is not in the answer map {sorted(labels)}",
                file=where,
                row=i,
                field="label",
            )
        out = {"text": text.strip(), "label": label}
        if row.get("text_pair") not in (None, ""):
            out["text_pair"] = str(row["text_pair"]).strip()
        clean.append(out)
    return clean


# --- readers ----------------------------------------------------------------------------------
def _read_bytes_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); save the file as UTF-8",
            file=path,
            row=line,
        ) from None


def read_jsonl(path: Path) -> list[dict]:
    text = _read_bytes_text(path)
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON ({err.msg})", file=path, row=i) from None
    if not rows:
        raise DataError("file is empty", file=path)
    return rows


def read_csv(path: Path) -> list[dict]:
    text = _read_bytes_text(path)
    if not text.strip():
        raise DataError("file is empty", file=path)
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for i, row in enumerate(reader, start=1):
        if None in row:  # more cells than header columns
            raise DataError("more cells than columns in the header", file=path, row=i)
        rows.append({k: v for k, v in row.items() if not (k == "text_pair" and v == "")})
    if not rows:
        raise DataError("no data rows under the header", file=path)
    return rows


def read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path)
    if suffix in (".csv", ".tsv"):
        return read_csv(path)
    raise DataError("unsupported file type: use .csv or .jsonl", file=path)


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
def load_task_folder(folder: Path) -> Task:
    """A task in the sample format: task.yaml + train/val/test.jsonl."""
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
    splits = {}
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"missing {split} split", file=path)
        splits[split] = check_rows(read_jsonl(path), labels, path)
    return Task(
        name=name,
        template=meta["template"],
        labels=labels,
        splits=splits,
        description=str(meta.get("description", "")),
        source=str(meta.get("source", "")),
        license=str(meta.get("license", "")),
    )


def load_task_file(path: Path, spec: TaskSpec, seed: int = 0) -> Task:
    """A user's CSV/JSONL with columns text, optional text_pair, label; split 60/15/25."""
    raw = read_rows(path)
    labels = spec.labels or {
        lab: f" {lab}" for lab in sorted({str(r.get("label", "")).strip() for r in raw})
    }
    labels = _check_labels(labels, path)
    rows = check_rows(raw, labels, path)
    has_pair = any("text_pair" in r for r in rows)
    template = spec.template or (DEFAULT_PAIR_TEMPLATE if has_pair else DEFAULT_TEMPLATE)
    _check_template(template, path)
    return Task(
        name=spec.name,
        template=template,
        labels=labels,
        splits=split_rows(rows, seed=seed),
        description=spec.description or f"user data from {path.name}",
        source=str(path),
    )


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
    label_names = None
    first = next(iter(ds.values()))
    feature = first.features.get("label")
    if isinstance(feature, datasets.ClassLabel):
        label_names = feature.names

    def rows_of(d) -> list[dict]:
        out = []
        for r in d:
            row = {k: r[k] for k in ("text", "text_pair", "label") if k in r}
            if label_names is not None and isinstance(row.get("label"), int):
                row["label"] = label_names[row["label"]]
            out.append(row)
        return out

    all_rows = {s: rows_of(d) for s, d in ds.items()}
    seen = sorted({str(r.get("label")) for rs in all_rows.values() for r in rs})
    labels = _check_labels(spec.labels or {lab: f" {lab}" for lab in seen}, ref)
    split_names = {"validation": "val", "dev": "val"}
    named = {split_names.get(k, k): v for k, v in all_rows.items()}
    if all(s in named for s in SPLITS):
        splits = {s: check_rows(named[s], labels, ref, s) for s in SPLITS}
    else:
        rows = check_rows([r for rs in all_rows.values() for r in rs], labels, ref)
        splits = split_rows(rows, seed=seed)
    template = spec.template or DEFAULT_TEMPLATE
    _check_template(template, ref)
    return Task(name=spec.name, template=template, labels=labels, splits=splits, source=ref)


def load_task(spec: TaskSpec, cfg: ExperimentConfig) -> Task:
    """Resolve a config task entry: preset, sample task by name, file, folder or dataset."""
    from core import presets

    if spec.path is None and spec.name in presets.PAPER_TASKS:
        return presets.load_paper_task(spec.name)
    ref = spec.path or str(Path(cfg.data.root) / spec.name)
    if ref.startswith("hf:"):
        return load_hf_dataset(ref, spec, seed=cfg.data.seed)
    path = cfg.resolve(ref)
    if path.is_dir() and (path / "task.yaml").is_file():
        task = load_task_folder(path)
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
