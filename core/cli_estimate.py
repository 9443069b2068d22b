"""The estimate's commands beside the pipeline's: `grouptune mix` (mixing weights, predicted,
suggested or trained), `grouptune train-subset` and `grouptune validate-estimate` (the estimate
checked against real fine-tunes). core.cli mounts them."""

from __future__ import annotations

from pathlib import Path

import typer

from core.cli_common import ConfigOpt, JsonOpt, WorkspaceOpt, configure, context, emit
from core.cli_text import validation_text
from core.errors import GroupTuneError
from core.validate.subsets import DEFAULT_SUBSETS


def mix_cmd(
    config: Path | None = ConfigOpt,
    workspace: Path | None = WorkspaceOpt,
    group: int | None = typer.Option(
        None,
        "--group",
        help="A group of the chosen grouping (default: the single adapter on every task).",
    ),  # fmt: skip
    weight: list[str] = typer.Option([], "--weight", help="TASK=W (repeat); others 1."),
    suggest: bool = typer.Option(False, "--suggest", help="Search weights (the estimate)."),
    objective: str = typer.Option("loss", help="suggest: minimise loss or maximise accuracy."),
    protect: bool = typer.Option(False, help="suggest: no task below its uniform prediction."),
    train: bool = typer.Option(False, "--train", help="Train with the weights, compare on test."),
    as_json: bool = JsonOpt,
):
    """Mixing weights for one adapter's tasks: their predicted effect, or a suggestion; with
    --train, the adapter trained with them beside the uniform one, compared on the test rows."""
    from core import pipeline
    from core.cli_text import mix_text

    cfg, ws = context(config, workspace)
    weights = {}
    for item in weight:
        task, _, value = item.partition("=")
        try:
            weights[task] = float(value)
        except ValueError:
            raise GroupTuneError(f"--weight expects TASK=NUMBER, got {item!r}") from None
    extra = {"objective": objective, "protect": protect} if suggest else {}
    result = pipeline.mix(cfg, ws, group, weights, **extra)
    if train:
        from core.ensemble.mixed import train_mixed

        configure(cfg)
        done = train_mixed(cfg, ws, group, result["weights"])
        result["trained"] = {k: done[k] for k in ("adapter", "uniform", "weighted", "gain")}
    emit(result, as_json, mix_text(result))


def train_subset_cmd(
    config: Path | None = ConfigOpt,
    workspace: Path | None = WorkspaceOpt,
    task: list[str] = typer.Option(..., "--task", help="A task of the subset (repeat)."),
    seed: int | None = typer.Option(None, "--seed", help="Training seed (default: config's)."),
    as_json: bool = JsonOpt,
):
    """Fine-tune one adapter on a subset of tasks for real (resumes from its checkpoint)."""
    from core.validate.subsets import train_subset

    cfg, ws = context(config, workspace)
    configure(cfg)
    record = train_subset(cfg, ws, task, seed=seed)
    result = {k: record.get(k) for k in ("name", "tasks", "best_epoch", "val_metrics")}
    emit(result, as_json)


def validate_estimate_cmd(
    config: Path | None = ConfigOpt,
    workspace: Path | None = WorkspaceOpt,
    subsets: int = typer.Option(
        DEFAULT_SUBSETS, "--subsets", help="How many estimated subsets to fine-tune."
    ),
    seeds: int = typer.Option(
        3,
        "--seeds",
        help="Training seeds per subset: the estimate is scored against their mean, and one "
        "seed against the others' mean is the noise ceiling.",
    ),
    jobs: bool = typer.Option(True, "--jobs/--no-jobs", help="One background job per subset."),
    as_json: bool = JsonOpt,
):
    """Fine-tune N estimated subsets (spread over the tasks) for real with several training
    seeds; score the estimates against the seeds' mean, within each task, beside the noise
    ceiling (one seed against the others' mean)."""
    from core.validate.validation import validate_estimate

    cfg, ws = context(config, workspace)
    configure(cfg)
    result = validate_estimate(cfg, ws, subsets, jobs=jobs, n_seeds=seeds)
    emit(result, as_json, validation_text(result))
