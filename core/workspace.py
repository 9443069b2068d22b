"""The workspace: one folder per experiment holding everything it produced.

Layout (every path below is relative to the workspace root):
  config.yaml                  snapshot of the experiment config (rewritten when it changes)
  features/<task>/             gradient store of one task (see core.gradients.store)
  estimates/subsets.json       sampled subsets;  estimates/results.csv  per-subset, per-task table
  affinity.json                task affinity matrix and the settings that made it
  groupings/m<m>.json          partition for m groups;  groupings/sweep.json  all m
  adapters/<name>/             PEFT adapter folders (group-<i>, baseline, subset-<hash>: a task set
                               fine-tuned by validate-estimate or set aside by regrouping)
  validation.json              estimated vs real fine-tuning of a few subsets (core.validate.validation)
  cache/prefix/<model key>/    frozen lower layers' hidden states per task split (core.models.prefix)
  eval/<model>.json            test metrics of zero_shot / baseline / ensemble
  ensemble.json                ensemble manifest
  accounting.json              FLOPs, wall time and peak memory per stage
  report.json                  the comparison
  jobs.db, logs/               background jobs (core.jobs)
The top-level JSON documents are read and written through core.artifacts (their keys checked).
"""

from __future__ import annotations

import os
from pathlib import Path

from core.config import ExperimentConfig, load_config, parse_config
from core.io import read_json, safe_name, write_json, write_text


class Workspace:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts).resolve()
        if self.root not in p.parents and p != self.root:
            raise ValueError(f"path {'/'.join(parts)!r} escapes the workspace {self.root}")
        return p

    def ensure(self) -> Workspace:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    # --- artifacts -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path("config.yaml")

    def features_dir(self, task: str) -> Path:
        return self.path("features", safe_name(task, "task name"))

    def adapter_dir(self, name: str) -> Path:
        return self.path("adapters", safe_name(name, "adapter name"))

    def eval_path(self, model: str) -> Path:
        return self.path("eval", f"{safe_name(model, 'model name')}.json")

    def grouping_path(self, m: int) -> Path:
        return self.path("groupings", f"m{int(m)}.json")

    @property
    def logs_dir(self) -> Path:
        return self.path("logs")

    # --- config snapshot -------------------------------------------------------------------
    def save_config(self, cfg: ExperimentConfig) -> Path:
        """Snapshot the config. base_dir (what the config's relative paths resolve against) is
        stored relative to the workspace, so a workspace moved with its project keeps working."""
        self.ensure()
        base = os.path.relpath(Path(cfg.base_dir).resolve(), self.root)
        text = cfg.to_yaml() + f"# the config's relative paths resolve against\nbase_dir: {base}\n"
        return write_text(self.config_path, text)

    def load_config(self) -> ExperimentConfig:
        import yaml

        if not self.config_path.exists():
            return load_config(self.config_path)  # raises a clear "not found"
        data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        base = self.root / data.pop("base_dir", ".")
        return parse_config(data, source=str(self.config_path), base_dir=base.resolve())

    def read(self, *parts: str, default=None):
        p = self.path(*parts)
        return read_json(p) if p.exists() else default

    def write(self, obj, *parts: str) -> Path:
        return write_json(self.path(*parts), obj)


def open_workspace(workspace: str | Path | None, cfg: ExperimentConfig | None = None) -> Workspace:
    """The workspace folder to use: the one given, else workspaces/<experiment name>."""
    if workspace is None:
        if cfg is None:
            raise ValueError("either a workspace folder or a config is needed")
        workspace = Path("workspaces") / cfg.name
    ws = Workspace(workspace).ensure()
    if cfg is not None:
        ws.save_config(cfg)
    return ws
