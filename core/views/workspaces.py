"""Workspaces the dashboard can open, and each one's config (no torch)."""

from __future__ import annotations

import os
from pathlib import Path

from core import settings
from core.config import ExperimentConfig
from core.errors import GroupTuneError
from core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]  # the project folder (core/<step>/this.py)


SAMPLE_TASKS = ROOT / "sample_data" / "tasks"


def workspaces_root() -> Path:
    """Where new experiments go: $GROUPTUNE_WORKSPACES, else <project>/workspaces."""
    return Path(settings.text("GROUPTUNE_WORKSPACES") or ROOT / "workspaces").resolve()


def list_workspaces() -> list[str]:
    """Experiment folders (holding config.yaml) under `workspaces_root()`, plus
    $GROUPTUNE_WORKSPACE first when set."""
    base = workspaces_root()
    found = sorted(str(p) for p in base.glob("*") if (p / "config.yaml").is_file())
    env = settings.text("GROUPTUNE_WORKSPACE")
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


def save_experiment(cfg: ExperimentConfig, folder: str | os.PathLike | None = None) -> Workspace:
    """Save the config as <folder>/config.yaml (default workspaces/<name>); return the workspace."""
    ws = Workspace(folder if folder is not None else workspaces_root() / cfg.name)
    ws.save_config(cfg)
    return ws
