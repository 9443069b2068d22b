"""Where an experiment stands, read from its workspace without loading a model (no torch).

The dashboard and `grouptune` share this view of a workspace: one row per unit of work
(a task's gradient store, the affinity matrix, the chosen grouping, each adapter, each
evaluation, the report), each in one of the states

  fresh    done, and made from the current config and inputs
  stale    done, but its config or inputs changed since (the reason is given)
  partial  started and checkpointed, not finished
  missing  not done yet
  running / queued / failed   a background job for it is in that state

plus `next_step`, the command(s) that move the experiment forward. Every command is a
`grouptune` argv, the same a user would type and a job runs (`submit_step`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from core.config import ExperimentConfig
from core.errors import GroupTuneError
from core.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_TASKS = ROOT / "sample_data" / "tasks"
ACTIVE = ("running", "queued")


# --- workspaces and config ---------------------------------------------------------------------
def workspaces_root() -> Path:
    """Where new experiments go: $GROUPTUNE_WORKSPACES, else <project>/workspaces."""
    return Path(os.environ.get("GROUPTUNE_WORKSPACES") or ROOT / "workspaces").resolve()


def list_workspaces() -> list[str]:
    """Experiment folders (holding config.yaml) under `workspaces_root()`, plus
    $GROUPTUNE_WORKSPACE first when set."""
    base = workspaces_root()
    found = sorted(str(p) for p in base.glob("*") if (p / "config.yaml").is_file())
    env = os.environ.get("GROUPTUNE_WORKSPACE")
    if env:
        env = str(Path(env).expanduser().resolve())
        found = [env, *[f for f in found if f != env]]
    return found


def load_config(ws: Workspace) -> tuple[ExperimentConfig | None, str | None]:
    """(config, None), or (None, a plain message) when there is none or it does not validate."""
    if not ws.config_path.is_file():
        return None, f"no config.yaml in {ws.root}"
    try:
        return ws.load_config(), None
    except (GroupTuneError, ValueError, OSError) as err:
        return None, str(err)


def resolved_config(ws: Workspace, cfg: ExperimentConfig) -> Path:
    """Write <ws>/config.resolved.yaml: the config with every task path made absolute.

    `grouptune run CONFIG` resolves a config's relative paths against CONFIG's own folder, so
    the driver job gets this copy, which means the same wherever it lies.
    """
    from core.io import write_text

    root = cfg.resolve(cfg.data.root).resolve()
    specs = []
    for spec in cfg.tasks:
        path = spec.path
        if path and not path.startswith("hf:"):
            path = str(cfg.resolve(path).resolve())
        specs.append(spec.model_copy(update={"path": path}))
    data = cfg.model_copy(update={"tasks": specs})
    data = data.model_copy(update={"data": cfg.data.model_copy(update={"root": str(root)})})
    return write_text(ws.path("config.resolved.yaml"), data.to_yaml())


# --- jobs ----------------------------------------------------------------------------------------
def read_jobs(ws: Workspace) -> list[dict]:
    """Every job of the workspace, oldest first ([] when it never had one; creates nothing)."""
    if not ws.path("jobs.db").is_file():
        return []
    from core.jobs import open_store

    return open_store(ws.root).list()


def job_counts(jobs: list[dict]) -> dict[str, int]:
    """How many jobs are in each state (every state present, 0 when none)."""
    from core.jobs import STATES

    counts = dict.fromkeys(STATES, 0)
    for job in jobs:
        counts[job["state"]] += 1
    return counts


def _option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]


def job_targets(job: dict) -> list[tuple[str, str]]:
    """The (stage, item) pairs a job works on, from its argv ("*" = every item of the stage)."""
    argv = job.get("argv") or []
    command = argv[0] if argv else ""
    if command == "gradients":
        return [("gradients", t) for t in _option(argv, "--task")] or [("gradients", "*")]
    if command == "train":
        which = (_option(argv, "--adapter") or ["all"])[-1]
        if which in ("all", "groups"):
            return [("training", "*")]
        return [("training", which)]
    if command == "evaluate":
        items = ["zero_shot"] if "--zero-shot" in argv else ["*"]
        return [("evaluation", i) for i in items]
    if command == "group":
        return [("grouping", "chosen")]
    if command == "boost":
        return [("boosting", f"boost-{r}") for r in _option(argv, "--round")] or [("boosting", "*")]
    if command in ("affinity", "report"):
        return [(command, command)]
    if command == "run":
        return [("run", "run")]
    if command == "validate-estimate":
        return [("validation", "validation")]
    if command == "train-subset":  # one real fine-tune of validate-estimate (one seed)
        seed = _option(argv, "--seed")
        item = "+".join(sorted(_option(argv, "--task")))
        return [("validation", item + (f" (seed {seed[0]})" if seed else ""))]
    return []


def latest_jobs(jobs: list[dict]) -> dict[tuple[str, str], dict]:
    """(stage, item) -> the newest job working on it (jobs are given oldest first)."""
    out: dict[tuple[str, str], dict] = {}
    for job in jobs:
        for target in job_targets(job):
            out[target] = job
    return out


def active_items(jobs: list[dict], stage: str) -> set[str]:
    """Items of `stage` a running or queued job works on ("*" = all of them)."""
    return {i for (s, i), j in latest_jobs(jobs).items() if s == stage and j["state"] in ACTIVE}


def submit_step(
    ws: Workspace, argv: list[str], depends_on=(), step: str | None = None, **kw
) -> int:
    """Queue `grouptune <argv> --workspace <ws>` as a background job; return its id."""
    from core.jobs import submit

    argv = [*argv, "--workspace", str(ws.root)]
    step = step or ":".join(
        [argv[0], *_option(argv, "--task"), *_option(argv, "--adapter"), *_option(argv, "--m")]
    )
    return submit(ws.root, step, step, argv, depends_on=list(depends_on), cwd=ROOT, **kw)


def submit_run(ws: Workspace, cfg: ExperimentConfig) -> int:
    """The `grouptune run` driver job: it only waits on the jobs it submits (slots 0)."""
    config = resolved_config(ws, cfg)
    argv = ["run", str(config), "--workspace", str(ws.root)]
    from core.jobs import submit

    return submit(ws.root, "run", "run", argv, resources={"slots": 0}, cwd=ROOT)


def cli_text(argv: list[str], ws: Workspace | None = None) -> str:
    """The terminal command a job runs."""
    words = ["grouptune", *argv] + (["--workspace", str(ws.root)] if ws is not None else [])
    return " ".join(w if w and " " not in w else repr(w) for w in words)


def tail_log(path: str | os.PathLike | None, lines: int = 60) -> str:
    """The last `lines` lines of a log file ('' when there is none yet)."""
    if not path or not Path(path).is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, os.path.getsize(path) - 200 * lines))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def jobs_frame(jobs: list[dict]):
    """A table of jobs, newest first: id, step, state, progress (0-1), ETA, runtime, note."""
    rows = []
    now = time.time()
    for job in reversed(jobs):
        started, finished = job.get("started"), job.get("finished")
        note = job["error"] if job["state"] == "failed" else job.get("message")
        rows.append(
            {
                "id": job["id"],
                "step": job["step"],
                "state": job["state"],
                "progress": job.get("progress"),
                "eta_s": job.get("eta_s"),
                "runtime_s": (finished or now) - started if started else None,
                "attempts": job.get("attempts"),
                "note": note or "",
            }
        )
    cols = ["id", "step", "state", "progress", "eta_s", "runtime_s", "attempts", "note"]
    return pd.DataFrame(rows, columns=cols)


# --- gradient stores (core.store's status, without loading the model) -------------------------
def _store_key(cfg: ExperimentConfig, task, stored_model: dict | None) -> dict:
    """core.store.store_key without core.models: the model part is the store's own, with the
    config's name, revision, quantization (and an explicit dtype) put over it."""
    from core.store import store_key

    m = cfg.model
    model = {"name": m.name, "revision": m.revision, "quantization": m.quantization}
    if m.dtype != "auto":
        model["dtype"] = m.dtype
    model = {**(stored_model or {}), **model}  # a difference shows as the engine names it
    return store_key(cfg, task, model)


def gradient_status(ws: Workspace, cfg: ExperimentConfig, tasks) -> dict[str, str]:
    """Like core.store.store_status: 'fresh', 'stale (why)', 'partial (x/n)' or 'missing'."""
    from core.io import read_json
    from core.store import META, folder_status

    out = {}
    for task in tasks:
        folder = ws.features_dir(task.name)
        try:
            stored = read_json(folder / META).get("key", {}).get("model")
        except (OSError, ValueError, AttributeError):
            stored = None
        out[task.name] = folder_status(folder, _store_key(cfg, task, stored))
    return out


def write_bytes(path: Path, data: bytes) -> Path:
    """Write a file atomically (a temporary name in the same folder, then a rename)."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def gradient_table(ws: Workspace, cfg: ExperimentConfig, tasks, jobs=()):
    """Per task: store status, rows done / total, extraction seconds, finished time, and the
    newest gradients job (state). Columns: task, status, rows, seconds, finished, job."""
    from core.io import read_json

    grads = gradient_status(ws, cfg, tasks)
    latest = latest_jobs(list(jobs))
    rows = []
    for task in tasks:
        folder = ws.features_dir(task.name)
        try:
            meta = read_json(folder / "meta.json")
        except (OSError, ValueError):
            meta = {}
        total = sum((meta.get("rows") or {}).values())
        done = sum((meta.get("done") or {}).values()) if meta.get("done") else None
        job = latest.get(("gradients", task.name)) or latest.get(("gradients", "*"))
        rows.append(
            {
                "task": task.name,
                "status": grads[task.name],
                "rows": f"{done if done is not None else '?'}/{total}" if meta else "—",
                "seconds": meta.get("seconds"),
                "finished": meta.get("finished"),
                "job": f"{job['id']} {job['state']}" if job else "",
            }
        )
    return pd.DataFrame(rows, columns=["task", "status", "rows", "seconds", "finished", "job"])


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


# --- stages --------------------------------------------------------------------------------------
def _row(stage: str, item: str, status: str, detail: str = "") -> dict:
    state = status.split(" ", 1)[0]
    if status.startswith(("stale (", "partial (")):
        detail = detail or status[status.index("(") + 1 : -1]
    return {"stage": stage, "item": item, "state": state, "detail": detail}


def affinity_state(ws: Workspace, cfg: ExperimentConfig, grads: dict[str, str]) -> dict:
    """The affinity matrix: fresh when affinity.json was made from today's stores and settings."""
    from core.affinity import table_fingerprint
    from core.io import read_json

    aff = ws.read("affinity.json")
    if aff is None:
        return _row("affinity", "affinity", "missing")
    if list(aff.get("tasks", [])) != cfg.task_names:
        return _row("affinity", "affinity", "stale", "the tasks changed")
    not_fresh = [t for t, s in grads.items() if s != "fresh"]
    if not_fresh:
        return _row("affinity", "affinity", "stale", f"gradients not fresh: {not_fresh}")
    metas = {t: read_json(ws.features_dir(t) / "meta.json") for t in cfg.task_names}
    table = table_fingerprint(cfg, metas)
    if aff.get("fingerprint") != {"table": table, "metric": cfg.estimator.metric}:
        return _row("affinity", "affinity", "stale", "estimator settings or features changed")
    return _row("affinity", "affinity", "fresh", f"{aff.get('subsets')} subsets")


def grouping_state(ws: Workspace, aff_state: str) -> dict:
    chosen = ws.read("groupings", "chosen.json")
    if chosen is None:
        return _row("grouping", "chosen", "missing")
    if aff_state != "fresh" or _mtime(ws.path("groupings", "chosen.json")) < _mtime(
        ws.path("affinity.json")
    ):
        return _row("grouping", "chosen", "stale", "the affinity matrix changed since")
    return _row("grouping", "chosen", "fresh", f"m={chosen['m']} ({chosen['method']})")


def expected_adapters(ws: Workspace, cfg: ExperimentConfig) -> dict[str, list[str]]:
    """Adapter name -> its tasks: group-<i> per chosen group, then the all-task baseline."""
    chosen = ws.read("groupings", "chosen.json") or {}
    out = {f"group-{i}": list(g) for i, g in enumerate(chosen.get("groups", []))}
    out["baseline"] = list(cfg.task_names)
    return out


def adapter_state(
    ws: Workspace, cfg: ExperimentConfig, name: str, tasks: list[str], hashes: dict | None = None
) -> dict:
    """An adapter's state, judged as core.training does (its run fingerprint): the tasks and
    their contents (`hashes`: task -> Task.content_hash(), when given), the token budget, the
    adapter and training settings, the base model, and the number of epochs."""
    from core.recipe import training_fingerprint

    record = ws.read("adapters", name, "grouptune.json")
    if record is None:
        state = ws.read("adapters", name, "checkpoint", "state.json")
        if state is None:
            return _row("training", name, "missing")
        epoch = state.get("state", {}).get("epoch", 0)
        return _row("training", name, "partial", f"epoch {epoch}/{cfg.training.epochs}")
    if sorted(record.get("tasks", [])) != sorted(tasks):
        return _row("training", name, "stale", f"trained on {record.get('tasks')}")
    if record.get("epochs") != cfg.training.epochs:
        epochs = f"trained {record.get('epochs')} epochs, the config asks {cfg.training.epochs}"
        return _row("training", name, "stale", epochs)
    fp, saved = record.get("fingerprint") or {}, record.get("config") or {}
    data = fp.get("data") or {}
    model = {k: getattr(cfg.model, k) for k in ("name", "revision", "quantization")}
    checks = {
        "training settings": (fp.get("training"), training_fingerprint(cfg.training)),
        "adapter settings": (saved.get("adapter"), cfg.adapter.model_dump(mode="json")),
        "base model": ({k: (saved.get("model") or {}).get(k) for k in model}, model),
        "token budget": (data.get("max_tokens"), cfg.data.max_tokens),
    }
    if hashes is not None:
        checks["task data"] = (data.get("tasks"), {t: hashes.get(t) for t in tasks})
    for what, (old, now) in checks.items():
        if old is not None and old != now:
            return _row("training", name, "stale", f"the {what} changed")
    return _row("training", name, "fresh", f"best epoch {record.get('best_epoch')}")


def boosting_states(ws: Workspace, cfg: ExperimentConfig) -> list[dict]:
    """One row per configured boosting round: fresh when the manifest holds it, made on the
    weights the config asks for (core.boosting.missing_rounds, the engine's own rule)."""
    from core.boosting import boost_name, missing_rounds

    manifest = ws.read("ensemble.json") if ws.path("ensemble.json").exists() else None
    todo = missing_rounds(cfg, manifest)
    detail = "" if manifest else "after the group adapters"
    return [
        _row("boosting", boost_name(r), "missing" if r in todo else "fresh", detail)
        for r in range(cfg.ensemble.boosting)
    ]


def boosting_todo(ws: Workspace, cfg: ExperimentConfig) -> bool:
    """Whether some configured boosting round is not made yet."""
    return any(r["state"] != "fresh" for r in boosting_states(ws, cfg))


def evaluation_states(ws: Workspace, cfg: ExperimentConfig, hashes: dict) -> list[dict]:
    """zero_shot: fresh when eval/zero_shot.json's fingerprint has today's tasks (contents) and
    token budget; baseline and ensemble: when evaluated after their adapters were trained."""
    rows = []
    zero = ws.read("eval", "zero_shot.json")
    if zero is None:
        rows.append(_row("evaluation", "zero_shot", "missing"))
    else:
        fp = zero.get("fingerprint") or {}
        same = fp.get("tasks") == hashes and fp.get("max_tokens") in (None, cfg.data.max_tokens)
        rows.append(_row("evaluation", "zero_shot", "fresh" if same else "stale", ""))
    groups = [n for n in expected_adapters(ws, cfg) if n != "baseline"]
    inputs = {
        "baseline": [ws.path("adapters", "baseline", "grouptune.json")],
        "ensemble": [ws.path("ensemble.json")]
        + [ws.path("adapters", n, "grouptune.json") for n in groups],
    }
    for model, paths in inputs.items():
        path = ws.path("eval", f"{model}.json")
        if not path.exists():
            rows.append(_row("evaluation", model, "missing"))
        elif any(_mtime(p) > _mtime(path) or not p.exists() for p in paths):
            rows.append(_row("evaluation", model, "stale", "retrained since"))
        else:
            rows.append(_row("evaluation", model, "fresh"))
    return rows


def report_state(ws: Workspace) -> dict:
    path = ws.path("report.json")
    if not path.exists():
        return _row("report", "report", "missing")
    evals = [p for p in ws.path("eval").glob("*.json")] if ws.path("eval").is_dir() else []
    if any(_mtime(p) > _mtime(path) for p in evals):
        return _row("report", "report", "stale", "evaluated again since")
    missing = (ws.read("report.json") or {}).get("missing") or []
    return _row("report", "report", "fresh", f"{len(missing)} parts missing" if missing else "")


def experiment_status(ws: Workspace, cfg: ExperimentConfig, tasks, jobs=None) -> list[dict]:
    """One row per unit of work: {"stage", "item", "state", "detail"}, in pipeline order,
    with running/queued/failed jobs overriding the file-based state of what they work on."""
    grads = gradient_status(ws, cfg, tasks)
    hashes = {t.name: t.content_hash() for t in tasks}
    rows = [_row("gradients", t, s) for t, s in grads.items()]
    aff = affinity_state(ws, cfg, grads)
    rows.append(aff)
    rows.append(grouping_state(ws, aff["state"]))
    for name, group in expected_adapters(ws, cfg).items():
        rows.append(adapter_state(ws, cfg, name, group, hashes))
    rows += boosting_states(ws, cfg)
    rows += evaluation_states(ws, cfg, hashes)
    rows.append(report_state(ws))
    latest = latest_jobs(jobs or [])
    for row in rows:
        job = latest.get((row["stage"], row["item"])) or latest.get((row["stage"], "*"))
        if job is None or job["state"] in ("done", "cancelled"):
            continue
        if job["state"] in ACTIVE:
            row["state"], row["detail"] = (
                job["state"],
                f"job {job['id']} {job.get('message') or ''}",
            )
        elif row["state"] != "fresh":  # failed, and nothing done since
            row["state"], row["detail"] = "failed", f"job {job['id']}: {job.get('error') or ''}"
    return rows


STAGES = {
    "gradients": "Gradient features, per task",
    "affinity": "Task affinity matrix",
    "grouping": "Task groups",
    "training": "Adapters (one per group + baseline)",
    "boosting": "Ensemble weights and boosting rounds",
    "evaluation": "Test evaluation",
    "report": "Comparison report",
}


def stage_summary(rows: list[dict]) -> list[dict]:
    """Per stage, in pipeline order: {"stage", "label", "state" (the most urgent of its rows:
    running, queued, failed, stale, partial, missing, then fresh), "fresh", "total"}."""
    order = ["running", "queued", "failed", "stale", "partial", "missing", "fresh"]
    out = []
    for stage, label in STAGES.items():
        mine = [r for r in rows if r["stage"] == stage]
        if not mine:
            continue
        state = min((r["state"] for r in mine), key=order.index)
        fresh = sum(r["state"] == "fresh" for r in mine)
        out.append(
            {"stage": stage, "label": label, "state": state, "fresh": fresh, "total": len(mine)}
        )
    return out


def next_step(rows: list[dict]) -> dict | None:
    """The first stage that is not fresh: {"stage", "title", "why", "argvs", "busy"}.

    argvs: the `grouptune` commands (without --workspace) that do it, one job each; busy: a
    job is already working on it. None when everything is fresh.
    """
    for stage in STAGES:
        todo = [r for r in rows if r["stage"] == stage and r["state"] != "fresh"]
        if not todo:
            continue
        busy = any(r["state"] in ACTIVE for r in todo)
        items = [r["item"] for r in todo if r["state"] not in ACTIVE]
        argvs = {
            "gradients": [["gradients", "--task", t] for t in items],
            "affinity": [["affinity"]],
            "grouping": [["group"]],
            "training": [["train", "--adapter", a] for a in items],
            "boosting": [["boost"]],  # one job: each round builds on the one before
            "evaluation": [["evaluate"]],
            "report": [["report"]],
        }[stage]
        titles = {
            "gradients": f"Compute gradient features of {len(items)} task(s)",
            "affinity": "Estimate the task affinity matrix",
            "grouping": "Choose the task groups",
            "training": f"Train {len(items)} adapter(s)",
            "boosting": f"Fit the ensemble weights and {len(items)} boosting round(s)",
            "evaluation": "Evaluate zero-shot, baseline and ensemble on the test splits",
            "report": "Write the comparison report",
        }
        why = "; ".join(f"{r['item']}: {r['state']}" for r in todo[:6])
        return {
            "stage": stage,
            "title": titles[stage],
            "why": why,
            "argvs": argvs if items else [],
            "busy": busy,
        }
    return None


# --- datasets ------------------------------------------------------------------------------------
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
    built in memory first (checked by core.tasks): when it does not load, DataError is raised
    and nothing in the workspace changes. Returns the Task."""
    import yaml

    from core.config import TaskSpec
    from core.errors import DataError
    from core.io import safe_name, write_text
    from core.tables import parse_table
    from core.tasks import task_from_table

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
    from core.tasks import load_task, subsample

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
    from core.tasks import answer_word_overlaps

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
    sections["features"]["k"] = form["k"]
    sections["estimator"].update(subsets=form["subsets"], subset_size=form["subset_size"])
    sections["grouping"]["m"] = form.get("m") or None
    sections["training"]["epochs"] = form["epochs"]
    data.update(sections, name=form["name"], tasks=specs)
    return parse_config(data, source="the experiment form", base_dir=ROOT)


def save_experiment(cfg: ExperimentConfig, folder: str | os.PathLike | None = None) -> Workspace:
    """Save the config as <folder>/config.yaml (default workspaces/<name>); return the workspace."""
    ws = Workspace(folder if folder is not None else workspaces_root() / cfg.name)
    ws.save_config(cfg)
    return ws


# --- affinity ------------------------------------------------------------------------------------
def clustered_order(T, names: list[str], groups: list[list[str]] | None = None) -> list[str]:
    """Task order for the heatmap: group by group (when given, in their order), and within a
    group by average-linkage hierarchical clustering on the affinity (similar tasks adjacent)."""
    import numpy as np
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    T = np.asarray(T, dtype=float)
    if len(names) > 2:
        D = T.max() - (T + T.T) / 2
        np.fill_diagonal(D, 0.0)
        leaves = [names[i] for i in leaves_list(linkage(squareform(D, checks=False), "average"))]
    else:
        leaves = list(names)
    if not groups:
        return leaves
    rank = {t: i for i, t in enumerate(leaves)}
    out = [t for g in groups for t in sorted(g, key=lambda t: rank.get(t, 0))]
    return out + [t for t in leaves if t not in out]


def affinity_view(ws: Workspace) -> dict | None:
    """affinity.json reordered for display: {"order", "T" (DataFrame), "counts" (DataFrame),
    "settings", "groups"}; None when there is no affinity yet."""
    aff = ws.read("affinity.json")
    if aff is None:
        return None
    names = list(aff["tasks"])
    chosen = ws.read("groupings", "chosen.json")
    groups = chosen["groups"] if chosen and set(sum(chosen["groups"], [])) == set(names) else None
    order = clustered_order(aff["affinity"], names, groups)
    T = pd.DataFrame(aff["affinity"], index=names, columns=names).loc[order, order]
    counts = pd.DataFrame(aff.get("counts") or 0, index=names, columns=names).loc[order, order]
    keys = ("metric", "subsets", "subset_size", "pairs", "method", "reg", "reg_range", "max_norm")
    keys += ("target",)
    return {
        "order": order,
        "T": T,
        "counts": counts,
        "settings": {k: aff.get(k) for k in keys},
        "groups": groups,
    }


def strongest_pair(T) -> tuple[str, str]:
    """The off-diagonal pair with the largest |affinity| (T a square DataFrame)."""
    best, pair = -1.0, (T.index[0], T.columns[min(1, len(T) - 1)])
    for i, a in enumerate(T.index):
        for b in T.columns[i + 1 :]:
            if abs(T.loc[a, b]) > best:
                best, pair = abs(T.loc[a, b]), (a, b)
    return pair


def pair_evidence(ws: Workspace, a: str, b: str):
    """The rows of estimates/results.csv behind T[a, b]: every scored subset holding both
    tasks, the rows of a and of b, with the z-score each contributes. T[a, b] is their mean
    (each side's mean, averaged) when the table is unchanged since affinity.json was made."""
    from core.affinity import SEP, _z_scores

    path = ws.path("estimates", "results.csv")
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path)
    metric = (ws.read("affinity.json") or {}).get("metric", "loss")
    table["z"] = _z_scores(table, metric)
    both = table["subset"].map(lambda s: {a, b} <= set(s.split(SEP)))
    rows = table[both & table["task"].isin([a, b])].copy()
    rows["gain_accuracy"] = rows["accuracy"] - rows["base_accuracy"]
    cols = ["subset_id", "subset", "task", "z", "loss", "base_loss", "accuracy"]
    cols += ["base_accuracy", "gain_accuracy", "reg", "norm"]
    return rows[cols].reset_index(drop=True)


def estimator_settings(cfg: ExperimentConfig, view: dict | None) -> pd.DataFrame:
    """The estimator's settings: as configured, and as affinity.json was made with."""
    made = (view or {}).get("settings", {})
    e = cfg.estimator
    k = "D (identity)" if cfg.features.projection == "identity" else cfg.features.k
    rows = [
        ("estimator", e.method, made.get("method")),
        ("projection dim k", k, None),
        ("subsets K", e.subsets, made.get("subsets")),
        ("subset size", e.subset_size, made.get("subset_size")),
        ("all pairs", e.pairs, made.get("pairs")),
        ("argmin: λ (L2; empty = calibrated)", e.reg, made.get("reg")),
        ("argmin: λ used (range)", None, made.get("reg_range")),
        ("argmin: max update norm", e.max_norm, made.get("max_norm")),
        ("metric", e.metric, made.get("metric")),
        ("target", cfg.features.target, made.get("target")),
    ]
    df = pd.DataFrame(rows, columns=["setting", "config", "affinity.json"])
    return df.astype(str).replace({"None": "—"})


# --- groups --------------------------------------------------------------------------------------
def sweep_entries(ws: Workspace) -> list[dict]:
    return (ws.read("groupings", "sweep.json") or {}).get("entries", [])


def sweep_fresh(ws: Workspace) -> bool:
    sweep, aff = ws.read("groupings", "sweep.json"), ws.read("affinity.json")
    return bool(sweep and aff and sweep.get("fingerprint") == aff.get("fingerprint"))


def sweep_frame(entries: list[dict]):
    """One row per (m, method): predicted mean accuracy and loss, objective, groups."""
    rows = [
        {
            "m": e["m"],
            "method": e["method"],
            "predicted mean accuracy": e["mean_accuracy"],
            "predicted mean loss": e["mean_loss"],
            "objective": e["objective"],
            "groups": " | ".join(", ".join(g) for g in e["groups"]),
            "note": e.get("fallback") or e.get("baseline") or "",
        }
        for e in entries
    ]
    return pd.DataFrame(rows)


def groups_frame(groups: list[list[str]], predicted: dict[str, dict]):
    """Per task: its group, predicted accuracy after fine-tuning, zero-shot (linearised)
    accuracy and the predicted gain."""
    rows = []
    for i, group in enumerate(groups):
        for task in group:
            p = predicted.get(task, {})
            acc, base = p.get("accuracy"), p.get("base_accuracy")
            gain = acc - base if acc is not None and base is not None else None
            rows.append(
                {
                    "task": task,
                    "group": i,
                    "predicted accuracy": acc,
                    "zero-shot (linearised)": base,
                    "predicted gain": gain,
                    "predicted loss": p.get("loss"),
                }
            )
    return pd.DataFrame(rows)


def mean_predicted(predicted: dict[str, dict]) -> float:
    values = [p["accuracy"] for p in predicted.values()]
    return sum(values) / len(values) if values else float("nan")


# --- training --------------------------------------------------------------------------------------
def read_training_metrics(ws: Workspace, name: str):
    """adapters/<name>/metrics.jsonl as two tables: steps (step, epoch, task, loss, lr,
    grad_norm) and validation (epoch, step, task, accuracy, nll, f1; task "mean" included)."""
    import json

    path = ws.path("adapters", name, "metrics.jsonl")
    steps, val = [], []
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if rec.get("kind") == "step":
            keys = ("step", "epoch", "task", "loss", "lr", "grad_norm")
            steps.append({k: rec.get(k) for k in keys})
        elif rec.get("kind") == "val":
            for task, m in (rec.get("val") or {}).items():
                val.append({"epoch": rec["epoch"], "step": rec["step"], "task": task, **m})
            val.append(
                {
                    "epoch": rec["epoch"],
                    "step": rec["step"],
                    "task": "mean",
                    "accuracy": rec.get("mean_accuracy"),
                    "nll": rec.get("mean_nll"),
                }
            )
    step_cols = ["step", "epoch", "task", "loss", "lr", "grad_norm"]
    return pd.DataFrame(steps, columns=step_cols), pd.DataFrame(val)


def adapter_jobs(jobs: list[dict]) -> dict[str, dict]:
    """Adapter name -> its newest training job."""
    out = {}
    for (stage, item), job in latest_jobs(jobs).items():
        if stage == "training":
            out[item] = job
    return out


def adapters_frame(ws: Workspace, cfg: ExperimentConfig, tasks=None, jobs=()):
    """Per expected adapter: tasks, state, best epoch, best mean val accuracy, its job."""
    latest = adapter_jobs(list(jobs))
    hashes = {t.name: t.content_hash() for t in tasks} if tasks is not None else None
    rows = []
    for name, names in expected_adapters(ws, cfg).items():
        row = adapter_state(ws, cfg, name, names, hashes)
        job = latest.get(name) or latest.get("*")
        if job is not None and job["state"] in ACTIVE:
            row = {**row, "state": job["state"]}
        record = ws.read("adapters", name, "grouptune.json") or {}
        best = (record.get("val_metrics") or {}).get("mean") or {}
        rows.append(
            {
                "adapter": name,
                "tasks": ", ".join(names),
                "state": row["state"],
                "detail": row["detail"],
                "best epoch": record.get("best_epoch"),
                "val accuracy": best.get("accuracy"),
                "job": f"{job['id']} {job['state']}" if job else "",
            }
        )
    return pd.DataFrame(rows)
