"""The Datasets page's view: sample and uploaded tasks, their tables, and the experiment form."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.config import ExperimentConfig
from core.views.workspaces import ROOT, SAMPLE_TASKS
from core.workspace import Workspace

UPLOAD_TYPES = ("csv", "jsonl", "json", "tsv", "parquet")


def sample_task_names(root: Path = SAMPLE_TASKS) -> list[str]:
    return sorted(p.name for p in Path(root).glob("*") if (p / "task.yaml").is_file())


def upload_dir(ws: Workspace) -> Path:
    return ws.path("uploads")


def uploaded_tasks(ws: Workspace) -> dict[str, Path]:
    """Task name -> file, for the data files uploaded into the workspace."""
    folder = upload_dir(ws)
    files = sorted(folder.glob("*")) if folder.is_dir() else []
    return {p.stem: p for p in files if p.suffix.lstrip(".") in UPLOAD_TYPES}


def upload_spec(path: Path) -> dict:
    """The config entry of an uploaded file: its path and what the upload form said (columns,
    split, template, labels, description), kept beside it as <task>.yaml."""
    import yaml

    from core.errors import DataError

    side = Path(path).with_suffix(".yaml")
    extra = {}
    if side.is_file():
        try:
            extra = yaml.safe_load(side.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise DataError(f"not valid YAML: {err}", file=side) from None
    return {**extra, "path": str(path)}


def save_upload(
    ws: Workspace,
    task_name: str,
    filename: str,
    data: bytes,
    *,
    columns: dict | None = None,
    split: str | None = None,
    template: str | None = None,
    labels: dict[str, str] | None = None,
):
    """Store an uploaded CSV/TSV/JSONL/Parquet file as <ws>/uploads/<task>.<ext>, with the
    form's choices (columns, split, template, labels) in <task>.yaml beside it. The task is
    built in memory first (checked by core.data.tasks): when it does not load, DataError is raised
    and nothing in the workspace changes. Returns the Task."""
    import yaml

    from core.config import TaskSpec
    from core.data.sources import task_from_table
    from core.data.tables import parse_table
    from core.errors import DataError
    from core.io import safe_name, write_bytes, write_text

    name = safe_name(task_name.strip(), "task name")
    ext = Path(filename).suffix.lower().lstrip(".")
    if ext not in UPLOAD_TYPES:
        raise DataError(
            f"unsupported file type .{ext}: upload a .csv, .tsv, .jsonl or .parquet file",
            file=filename,
        )
    form = {"columns": columns, "split": split, "template": template, "labels": labels}
    form = {k: v for k, v in form.items() if v is not None}
    form["description"] = f"user data from {Path(filename).name}"
    try:
        spec = TaskSpec(name=name, **form)
    except ValueError as err:  # pydantic's ValidationError: the form's fields, named
        raise DataError(f"the upload form does not describe a task: {err}") from None
    task = task_from_table(parse_table(data, filename, source=filename), spec)
    path = ws.path("uploads", f"{name}.{ext}")
    write_bytes(path, data)
    write_text(path.with_suffix(".yaml"), yaml.safe_dump(form, sort_keys=False, allow_unicode=True))
    for old in uploaded_tasks(ws).values():  # an earlier upload of this task as another type
        if old.stem == name and old != path:
            old.unlink()
    task.source = str(path)
    return task


def load_one_task(name: str, cfg: ExperimentConfig | None, uploads: dict[str, Path]):
    """A task by name: from the config, an upload, or the sample data; with a config, cut to
    its row caps (data.max_train, ...), as the experiment uses it."""
    from core.config import TaskSpec, parse_config
    from core.data.sources import load_task, subsample

    if cfg is not None and name in cfg.task_names and name not in uploads:
        return subsample(load_task(next(t for t in cfg.tasks if t.name == name), cfg), cfg)
    spec = TaskSpec(name=name, **(upload_spec(uploads[name]) if name in uploads else {}))
    base = parse_config({"tasks": [name], "data": {"root": str(SAMPLE_TASKS)}}, base_dir=ROOT)
    task = load_task(spec, base)
    return subsample(task, cfg) if cfg is not None else task


def task_overview(tasks) -> pd.DataFrame:
    """Per task: rows per split, labels and answer words, template."""
    rows = []
    for t in tasks:
        rows.append(
            {
                "task": t.name,
                **{s: len(t.rows(s)) for s in ("train", "val", "test")},
                "labels": len(t.labels),
                "answer words": ", ".join(repr(w) for w in t.answer_words),
                "description": t.description,
            }
        )
    return pd.DataFrame(rows)


def label_balance(task):
    """Rows per (split, label): columns split, label, answer, rows."""
    rows = []
    for split in ("train", "val", "test"):
        counts = {label: 0 for label in task.labels}
        for r in task.rows(split):
            counts[r["label"]] += 1
        rows += [
            {"split": split, "label": lab, "answer": task.labels[lab], "rows": n}
            for lab, n in counts.items()
        ]
    return pd.DataFrame(rows, columns=["split", "label", "answer", "rows"])


def word_lengths(task):
    """Words per rendered prompt (whitespace split: a tokenizer-free proxy for tokens), one row
    per example: columns split, words."""
    rows = [
        {"split": split, "words": len(task.render(r).split())}
        for split in ("train", "val", "test")
        for r in task.rows(split)
    ]
    return pd.DataFrame(rows, columns=["split", "words"])


def preview_rows(task, split: str = "train", n: int = 8):
    rows = task.rows(split)[:n]
    return pd.DataFrame([{**r, "answer": task.labels[r["label"]]} for r in rows])


def shared_answer_words(tasks) -> list[dict]:
    """Pairs of tasks sharing answer words (their affinity is partly a shared format)."""
    from core.data.tasks import answer_word_overlaps

    return [{"tasks": [a, b], "words": w} for a, b, w in answer_word_overlaps(tasks)]


def build_config(form: dict, base: ExperimentConfig | None, uploads: dict[str, Path]):
    """An ExperimentConfig from the Datasets form, validated by core.config.parse_config.

    form: name, tasks, model, quantization, max_train, max_val, max_test, max_tokens, k,
    subsets, subset_size, m (0 = recommended), epochs. Every task path is made absolute, so
    the snapshot means the same wherever it is read. Raises ConfigError naming the field.
    """
    from core.config import parse_config

    data = base.model_dump(mode="json", exclude={"base_dir"}) if base is not None else {}
    old = {t.name: t for t in base.tasks} if base is not None else {}
    samples = set(sample_task_names())
    specs = []
    for name in form["tasks"]:
        if name in uploads:
            specs.append({"name": name, **upload_spec(uploads[name])})
        elif name in old and (old[name].path or name not in samples):
            spec = old[name].model_dump(mode="json")
            path = spec["path"] or str(Path(base.data.root) / name)
            if not path.startswith("hf:"):
                path = str(base.resolve(path).resolve())
            specs.append({**spec, "path": path})
        else:
            specs.append({"name": name})
    sections = {k: dict(data.get(k) or {}) for k in ("model", "data", "features", "estimator")}
    sections.update({k: dict(data.get(k) or {}) for k in ("grouping", "training")})
    sections["model"].update(name=form["model"], quantization=form["quantization"])
    sections["data"].update(root=str(SAMPLE_TASKS))
    for key in ("max_train", "max_val", "max_test", "max_tokens"):
        sections["data"][key] = form.get(key) or None
    sections["features"].update(projection=form.get("projection", "auto"), k=form.get("k") or None)
    sections["estimator"].update(subsets=form["subsets"], subset_size=form["subset_size"])
    sections["grouping"]["m"] = form.get("m") or None
    sections["training"]["epochs"] = form["epochs"]
    data.update(sections, name=form["name"], tasks=specs)
    return parse_config(data, source="the experiment form", base_dir=ROOT)
