"""Where a config's task entry comes from: a paper preset, a sample task by name, a task folder, a table file, or a `datasets` dataset (a saved folder or `hf:<name>[:<config>[:<split>]]`); and the config's whole task list, subsampled."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import yaml
from pydantic import ValidationError

from core.config import ExperimentConfig, TaskColumns, TaskSpec
from core.data.columns import map_rows, rare_label_notes, split_by_column, suggest_answer_words
from core.data.tables import Table, read_table
from core.data.tasks import (
    DEFAULT_PAIR_TEMPLATE,
    DEFAULT_TEMPLATE,
    SPLITS,
    Task,
    check_labels,
    check_rows,
    check_template,
    read_bytes_text,
    split_rows,
)
from core.errors import DataError, GroupTuneError
from core.io import safe_name

log = logging.getLogger("grouptune.tasks")


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
        meta = yaml.safe_load(read_bytes_text(meta_path)) or {}
    except yaml.YAMLError as err:
        raise DataError(f"not valid YAML: {err}", file=meta_path) from None
    for key in ("name", "template", "labels"):
        if key not in meta:
            raise DataError("missing key", file=meta_path, field=key)
    name = safe_name(str(meta["name"]), "task name")
    check_template(meta["template"], meta_path)
    labels = check_labels(meta["labels"], meta_path)
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
    labels = check_labels(labels, source)
    rows = check_rows(mapped.rows, labels, source, names=mapped.names)
    has_pair = any("text_pair" in r for r in rows)
    template = spec.template or (DEFAULT_PAIR_TEMPLATE if has_pair else DEFAULT_TEMPLATE)
    check_template(template, source)
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
    labels = check_labels(spec.labels or {lab: f" {lab}" for lab in seen}, ref)
    split_names = {"validation": "val", "dev": "val"}
    named = {split_names.get(k, k): v for k, v in all_rows.items()}
    if all(s in named for s in SPLITS):
        splits = {s: check_rows(named[s], labels, ref, s, names=names) for s in SPLITS}
    else:
        rows = check_rows([r for rs in all_rows.values() for r in rs], labels, ref, names=names)
        splits = split_rows(rows, seed=seed)
    template = spec.template or DEFAULT_TEMPLATE
    check_template(template, ref)
    notes = list(dict.fromkeys(n for m in all_mapped.values() for n in m.notes))
    notes += rare_label_notes(splits["train"], labels)
    return _log_notes(Task(spec.name, template, labels, splits, source=ref, notes=notes), ref)


def _saved_dataset(path: Path) -> bool:
    return path.is_dir() and any(
        (path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json")
    )


def load_task(spec: TaskSpec, cfg: ExperimentConfig) -> Task:
    """Resolve a config task entry: preset, sample task by name, file, folder or dataset."""
    from core.data import presets

    ref = spec.path or str(Path(cfg.data.root) / spec.name)
    path = cfg.resolve(ref) if not ref.startswith("hf:") else None
    if spec.name in presets.PAPER_TASKS and spec.path is None and not (path and path.exists()):
        return presets.load_paper_task(spec.name, seed=cfg.data.seed)  # from the Hub
    if spec.name in presets.PAPER_TASKS and path is not None and _saved_dataset(path):
        return presets.load_paper_task(spec.name, seed=cfg.data.seed, path=path)
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
        check_template(spec.template, path)
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


def select_tasks(cfg, task_names: list[str]) -> list[Task]:
    """Load only the named tasks (validated, subsampled), in the order given."""
    if not task_names:
        raise GroupTuneError("an adapter needs at least one task")
    if len(set(task_names)) != len(task_names):
        raise GroupTuneError(f"task listed twice in {task_names}")
    specs = {t.name: t for t in cfg.tasks}
    unknown = [t for t in task_names if t not in specs]
    if unknown:
        raise GroupTuneError(f"unknown task(s) {unknown}; the config has {sorted(specs)}")
    return load_tasks(cfg.model_copy(update={"tasks": [specs[t] for t in task_names]}))
