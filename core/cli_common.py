"""What every `grouptune` command shares: the options, the config and workspace of a step, and
printing its result (human text, or JSON with --json)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from core.errors import GroupTuneError

ConfigOpt = typer.Option(None, "--config", "-c", help="Experiment config (YAML).")


WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Experiment folder.")


JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout.")


def context(config: Path | None, workspace: Path | None):
    """The config and workspace of a step: from --config, else the workspace's snapshot."""
    from core.config import load_config
    from core.workspace import Workspace, open_workspace

    if config is not None:
        cfg = load_config(config)
        return cfg, open_workspace(workspace, cfg)
    if workspace is None:
        raise GroupTuneError("give --config CONFIG or --workspace DIR (one holding config.yaml)")
    ws = Workspace(workspace)
    return ws.load_config(), ws


def emit(result, as_json: bool, human: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        typer.echo(human if human is not None else json.dumps(result, indent=2, default=str))


def configure(cfg) -> None:
    from core.models.device import configure_cpu

    configure_cpu(cfg.model.threads)
