"""The commands that use what was trained: `grouptune predict`, `grouptune export` (the report,
or a deployable bundle) and `grouptune app` (the dashboard). core.cli mounts them."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from core.cli_common import ConfigOpt, JsonOpt, WorkspaceOpt, configure, context, emit


def predict_cmd(
    texts: list[str] | None = typer.Argument(None, help="Text(s) to answer, or use --input."),
    task: str = typer.Option(..., "--task", "-t", help="The task whose question to answer."),
    input_file: Path | None = typer.Option(
        None,
        "--input",
        "-i",
        help="A CSV/TSV/JSONL/Parquet file of rows, read with the task's column mapping "
        "(a label column, if any, gives the accuracy).",
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        help="Answer the task's own train, val or test rows, as the workspace loads them "
        "(`--split test` gives report.json's accuracy).",
    ),
    text_pair: list[str] | None = typer.Option(
        None, "--text-pair", help="The second text of each TEXT (tasks with {text_pair})."
    ),
    explain: bool = typer.Option(
        False, "--explain", help="Also each adapter's answer and weight and the baseline's."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Also write the predictions to a .csv or .json file."
    ),
    workspace: Path | None = WorkspaceOpt,
    config: Path | None = ConfigOpt,
    as_json: bool = JsonOpt,
):
    """Answer new inputs with the trained ensemble: per row the answer and each answer word's
    probability (the same scores `grouptune evaluate` reports)."""
    from core.data.inputs import file_inputs, task_columns, text_inputs
    from core.data.sources import select_tasks
    from core.data.tasks import SPLITS
    from core.ensemble import results
    from core.ensemble.manifest import load_manifest
    from core.errors import GroupTuneError

    cfg, ws = context(config, workspace)
    results.check_output(output)
    names = [t for g in load_manifest(ws)["groups"] for t in g]  # no manifest: a clear error
    if task not in names:
        raise GroupTuneError(f"unknown task {task!r}; this workspace's ensemble answers {names}")
    if [bool(texts), input_file is not None, split is not None].count(True) != 1:
        raise GroupTuneError("give the text(s) to answer, --input FILE or --split (one of them)")
    spec = select_tasks(cfg, [task])[0]
    if split is not None:
        if split not in SPLITS:
            raise GroupTuneError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
        rows = spec.rows(split)
    elif input_file is not None:
        rows = file_inputs(input_file, spec, task_columns(cfg, task))
    else:
        rows = text_inputs(spec, list(texts), list(text_pair or []))
    configure(cfg)
    from core.ensemble.predict import Ensemble, has_baseline

    ens = Ensemble.load(ws, cfg, baseline=explain and has_baseline(ws))
    doc = results.document(spec, rows, ens.predict(task, rows, explain), explain)
    if output is not None:
        results.write(output, doc)
    emit(doc, as_json, results.text(doc))


def export_cmd(
    workspace: Path | None = WorkspaceOpt,
    config: Path | None = ConfigOpt,
    bundle: Path | None = typer.Option(
        None,
        "--bundle",
        help="Instead of the report: write a deployable bundle to this folder (the adapters "
        "as PEFT folders, bundle.json, and predict.py needing only torch, transformers, peft).",
    ),
    include_model: bool = typer.Option(
        False, "--include-model", help="With --bundle: copy the base model's folder in too."
    ),
    as_json: bool = JsonOpt,
):
    """Write a self-contained HTML report and CSV tables to the workspace's exports/ folder,
    or (--bundle DIR) the trained ensemble as a bundle that runs without GroupTune."""
    cfg, ws = context(config, workspace)
    if bundle is not None:
        from core.ensemble.bundle import write_bundle

        result = write_bundle(cfg, ws, bundle, include_model=include_model)
        emit(result, as_json, f"{result['bundle']}\n  python {result['loader']} --help")
        return
    from core.report.export import export_report

    paths = export_report(ws)
    result = {
        "html": str(paths["html"]),
        "zip": str(paths["zip"]),
        "csv": {k: str(v) for k, v in paths["csv"].items()},
    }
    emit(result, as_json, f"{result['html']}\n{result['zip']}")


def app_cmd(
    workspace: Path | None = WorkspaceOpt,
    host: str = typer.Option("127.0.0.1", help="Address to bind (localhost by default)."),
    port: int = typer.Option(8501),
):
    """Launch the dashboard (bound to localhost unless --host says otherwise)."""
    import os

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    if workspace is not None:
        env["GROUPTUNE_WORKSPACE"] = str(Path(workspace).resolve())
    cmd = [sys.executable, "-m", "streamlit", "run", str(root / "app.py")]
    cmd += ["--server.address", host, "--server.port", str(port), "--server.headless", "true"]
    cmd += ["--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    typer.echo(f"GroupTune dashboard: http://{host}:{port}")
    # become the server (exec), so stopping `grouptune app` stops Streamlit too
    os.chdir(root)
    os.execvpe(cmd[0], cmd, env)
