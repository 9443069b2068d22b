"""`make demo` opens the dashboard at once: the gradient features are recomputed by a background
job (`grouptune gradients --background`), and the pages that need them say so and follow the
job until it finishes."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import ROOT
from dashboard import cli, copy_workspace, open_page, texts

from core.views.jobs import read_jobs
from core.workspace import Workspace


def test_make_demo_queues_the_features_and_does_not_wait_for_them():
    recipe = re.search(r"^demo:.*?\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    lines = recipe.group(1).splitlines()
    grads = [line for line in lines if "grouptune gradients" in line]
    assert grads and all("--background" in line for line in grads)
    assert "grouptune app" in lines[-1] and lines.index(grads[0]) < len(lines) - 1


def test_gradients_background_queues_one_job_only_when_needed(real_ws, monkeypatch):
    monkeypatch.setenv("GROUPTUNE_MAX_JOBS", "0")  # queued, never started: the test sees it
    assert cli("gradients", "--workspace", real_ws, "--background") == {
        "job": None, "tasks": [], "why": "every store is fresh",
    }  # fmt: skip
    ws = copy_workspace(real_ws, "demo_queue")
    shutil.rmtree(ws / "features" / "topics")
    first = cli("gradients", "--workspace", ws, "--background")
    assert first["tasks"] == ["topics"] and first["job"] is not None
    (job,) = read_jobs(Workspace(ws))
    assert job["argv"] == ["gradients", "--workspace", str(ws)] and job["state"] == "queued"
    again = cli("gradients", "--workspace", ws, "--background")
    assert again["job"] is None and again["why"] == "a job is already on it"
    assert len(read_jobs(Workspace(ws))) == 1


def test_pages_that_need_the_features_follow_the_job(real_ws, monkeypatch):
    monkeypatch.setenv("GROUPTUNE_MAX_JOBS", "0")
    ws = copy_workspace(real_ws, "demo_pages")
    shutil.rmtree(ws / "features")
    job = cli("gradients", "--workspace", ws, "--background")["job"]
    for page, waits in (("groups", "moving a task"), ("affinity", "re-estimating")):
        at = open_page(ws, page, monkeypatch)
        info = " ".join(texts(at, "info"))
        assert "being computed in the background" in info and waits in info
        bars = [p.proto.text for p in at.get("progress")]
        assert any(f"job {job} `gradients` queued" in b for b in bars)
        assert not [w for w in texts(at, "warning") if "What-if predictions are unavailable" in w]
    at = open_page(ws, "affinity", monkeypatch)
    assert "needs the gradient features" not in " ".join(texts(at, "info"))
    assert at.get("plotly_chart"), "the committed heatmap is still shown"


def test_the_committed_demo_is_current_on_another_machine(tmp_path, monkeypatch):
    """Another user's model cache (another HOME or GROUPTUNE_CACHE) holds the same weights, so
    the committed adapters, ensemble and evaluations stay usable and fresh there."""
    from core.data.sources import load_tasks
    from core.ensemble.predict import checked_manifest
    from core.io import read_json
    from core.models.fingerprint import model_fingerprint, same_model
    from core.models.registry import cache_dir
    from core.train.run import check_fingerprint
    from core.views.stages import evaluation_states

    models = cache_dir() / "models"
    if not (models / "smollm2-135m" / "provenance.json").exists():
        pytest.skip("smollm2-135m is not provisioned (make model)")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(models)
    monkeypatch.setenv("GROUPTUNE_CACHE", str(tmp_path / "cache"))
    demo = tmp_path / "quick"
    shutil.copytree(ROOT / "sample_data" / "workspaces" / "quick", demo)
    cli("init", "--config", ROOT / "sample_data" / "quick.yaml", "--workspace", demo)
    ws = Workspace(demo)
    cfg = ws.load_config()
    checked_manifest(cfg, ws)  # the Try-it page's check: no "made for another base model"
    now = model_fingerprint(cfg.model)
    for name in ("baseline", "group-0", "group-1", "boost-0"):
        record = read_json(ws.adapter_dir(name) / "grouptune.json")
        assert same_model(record["base_model"], now)  # what loading an adapter checks
        if "fingerprint" in record:  # trained (boost-0 was fitted on features): the trainer's
            saved = record["fingerprint"]
            check_fingerprint(saved, {**saved, "base_model": now}, demo)
    hashes = {t.name: t.content_hash() for t in load_tasks(cfg)}
    states = {r["item"]: (r["state"], r["detail"]) for r in evaluation_states(ws, cfg, hashes)}
    assert states == dict.fromkeys(("zero_shot", "baseline", "ensemble"), ("fresh", ""))
