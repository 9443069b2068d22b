"""The dashboard and the engine agree on whether gradient features are fresh: both call
core.gradients.store.store_status, whose model part is core.models.fingerprint (torch-free).

The two cases where they used to disagree: a base model whose weights changed under the same
name (a local folder rewritten, a GGUF re-provisioned), and `dtype: auto`, which the dashboard
used to leave out of the key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import sentiment_rows, write_task

from core.config import parse_config
from core.data.sources import load_tasks
from core.gradients.store import FeatureStore, store_key, store_status
from core.models.fingerprint import model_fingerprint
from core.views.stages import gradient_status
from core.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent


def _experiment(tmp_path: Path, model: dict):
    splits = {
        "train": sentiment_rows(8),
        "val": sentiment_rows(4, 50),
        "test": sentiment_rows(4, 90),
    }
    write_task(tmp_path / "tasks", "t", splits, {"negative": " no", "positive": " yes"})
    data = {"model": model, "tasks": ["t"], "data": {"root": "tasks"}}
    cfg = parse_config(data, base_dir=tmp_path)
    return cfg, Workspace(tmp_path / "ws"), load_tasks(cfg)


def _store(ws, cfg, task) -> None:
    """A started store under the current key (what a gradients job writes first)."""
    rows, gold = {"train": 2, "val": 2}, {"train": np.zeros(2, int), "val": np.zeros(2, int)}
    FeatureStore.open(
        ws.features_dir(task.name), store_key(cfg, task), {"D": 4, "dims": [4]}, rows, 2, 4, gold
    )


def _both(ws, cfg, tasks) -> tuple[str, str]:
    return store_status(ws, cfg, tasks)["t"], gradient_status(ws, cfg, tasks)["t"]


def test_a_local_model_folder_rewritten_in_place_is_stale_to_both(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    weights = folder / "model.safetensors"
    weights.write_bytes(b"a" * 64)
    cfg, ws, tasks = _experiment(tmp_path, {"name": str(folder)})
    _store(ws, cfg, tasks[0])
    engine, dashboard = _both(ws, cfg, tasks)
    assert engine == dashboard and engine.startswith("partial")

    weights.write_bytes(b"b" * 64)  # new weights, same size
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    engine, dashboard = _both(ws, cfg, tasks)
    assert engine == dashboard and engine.startswith("stale"), (engine, dashboard)


def test_a_reprovisioned_gguf_is_stale_to_both(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPTUNE_CACHE", str(tmp_path / "cache"))
    provenance = tmp_path / "cache" / "models" / "smollm2-135m" / "provenance.json"
    provenance.parent.mkdir(parents=True)
    provenance.write_text(json.dumps({"gguf_sha256": "1" * 64}))
    cfg, ws, tasks = _experiment(tmp_path, {"name": "smollm2-135m"})
    _store(ws, cfg, tasks[0])
    assert _both(ws, cfg, tasks)[0].startswith("partial")

    provenance.write_text(json.dumps({"gguf_sha256": "2" * 64}))
    engine, dashboard = _both(ws, cfg, tasks)
    assert engine == dashboard and engine.startswith("stale"), (engine, dashboard)


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_a_torch_free_process_computes_the_engines_fingerprint(tmp_path, dtype):
    """The dashboard never imports torch, yet `dtype: auto` depends on the GPU: its fingerprint
    (resolved in a child interpreter) must equal the engine's (resolved in-process)."""
    import torch  # noqa: F401  (this process is the engine's side)

    cfg, _, _ = _experiment(tmp_path, {"name": "tiny-llama", "dtype": dtype})
    engine = model_fingerprint(cfg.model)
    code = (
        "import json, sys\n"
        "from core.config import ModelConfig\n"
        "from core.models.fingerprint import model_fingerprint\n"
        f"fp = model_fingerprint(ModelConfig(name='tiny-llama', dtype={dtype!r}))\n"
        "print(json.dumps({'fp': fp, 'torch': 'torch' in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    dashboard = json.loads(out.stdout)
    assert dashboard == {"fp": engine, "torch": False}
    assert engine["dtype"] == "float32"  # what this CPU machine resolves "auto" to
