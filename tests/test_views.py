"""core.views: the experiment's state and the dashboard's derived tables, on workspaces made by
the real engine (tiny model), held against the engine's own functions and files."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT
from dashboard import cli, copy_workspace, write_experiment

from core.data.sources import load_tasks
from core.errors import ConfigError, DataError
from core.grouping.freshness import sweep_fresh
from core.jobs import JobStore
from core.report.frames import affinity_view, clustered_order, groups_frame
from core.views.affinity import estimator_settings, pair_evidence, strongest_pair
from core.views.datasets import (
    build_config,
    label_balance,
    load_one_task,
    preview_rows,
    sample_task_names,
    save_upload,
    shared_answer_words,
    upload_spec,
    uploaded_tasks,
    word_lengths,
)
from core.views.groups import mean_predicted, sweep_entries, sweep_frame
from core.views.jobs import (
    cli_text,
    job_counts,
    job_targets,
    jobs_frame,
    read_jobs,
    submit_run,
    submit_step,
    tail_log,
)
from core.views.stages import experiment_status, gradient_status, next_step
from core.views.training import adapters_frame, read_training_metrics
from core.views.workspaces import list_workspaces, resolved_config, save_experiment
from core.workspace import Workspace


def _state(ws: Workspace, jobs=None) -> dict[tuple[str, str], dict]:
    cfg = ws.load_config()
    rows = experiment_status(ws, cfg, load_tasks(cfg), jobs)
    return {(r["stage"], r["item"]): r for r in rows}


def _edit_config(ws_dir, change) -> None:
    path = ws_dir / "config.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_a_finished_workspace_is_fresh_everywhere(real_ws):
    states = _state(Workspace(real_ws))
    assert list(states) == [
        ("gradients", "reviews_a"),
        ("gradients", "reviews_b"),
        ("gradients", "topics"),
        ("affinity", "affinity"),
        ("grouping", "chosen"),
        ("training", "group-0"),
        ("training", "group-1"),
        ("training", "baseline"),
        ("boosting", "boost-0"),
        ("evaluation", "zero_shot"),
        ("evaluation", "baseline"),
        ("evaluation", "ensemble"),
        ("report", "report"),
    ]
    assert {r["state"] for r in states.values()} == {"fresh"}
    assert next_step(list(states.values())) is None


def test_a_new_workspace_is_missing_everywhere(tmp_path):
    config = write_experiment(tmp_path)
    cli("init", "--config", config, "--workspace", tmp_path / "ws")
    rows = list(_state(Workspace(tmp_path / "ws")).values())
    assert {r["state"] for r in rows} == {"missing"}
    step = next_step(rows)
    assert step["stage"] == "gradients"
    assert step["argvs"] == [
        ["gradients", "--task", t] for t in ("reviews_a", "reviews_b", "topics")
    ]


def test_gradient_status_agrees_with_the_store(real_ws):
    """The torch-free status gives exactly core.gradients.store.store_status's answers."""
    from core.gradients.store import store_status

    ws_dir = copy_workspace(real_ws, "status_grads")
    ws = Workspace(ws_dir)
    cfg = ws.load_config()
    assert gradient_status(ws, cfg, load_tasks(cfg)) == store_status(ws, cfg)
    shutil.rmtree(ws_dir / "features" / "topics")
    _edit_config(ws_dir, lambda d: d["features"].update(k=16))
    cfg = ws.load_config()
    mine, engine = gradient_status(ws, cfg, load_tasks(cfg)), store_status(ws, cfg)
    assert mine == engine
    assert mine["topics"] == "missing" and mine["reviews_a"] == "stale (projection.k: 32 -> 16)"
    _edit_config(ws_dir, lambda d: d["model"].update(quantization="8bit"))
    cfg = ws.load_config()
    mine = gradient_status(ws, cfg, load_tasks(cfg))
    assert mine["reviews_a"].startswith("stale (model.")
    assert mine == store_status(ws, cfg)


def test_changes_make_the_right_stages_stale(real_ws):
    ws_dir = copy_workspace(real_ws, "status_stale")
    ws = Workspace(ws_dir)
    _edit_config(ws_dir, lambda d: d["training"].update(epochs=2))
    states = _state(ws)
    # the default estimator replays the training recipe: a new recipe is a new estimate
    assert states["affinity", "affinity"]["state"] == "stale"
    assert states["training", "group-0"] == {
        "stage": "training",
        "item": "group-0",
        "state": "stale",
        "detail": "trained 1 epochs, the config asks 2",
    }
    assert next_step(list(states.values()))["argvs"] == [["affinity"]]
    _edit_config(ws_dir, lambda d: d["training"].update(epochs=1))
    assert _state(ws)["affinity", "affinity"]["state"] == "fresh"  # back to what it was made with
    _edit_config(ws_dir, lambda d: d["estimator"].update(method="argmin"))
    _edit_config(ws_dir, lambda d: d["training"].update(epochs=2))
    cli("affinity", "--workspace", ws_dir)
    states = _state(ws)
    assert states["affinity", "affinity"]["state"] == "fresh"  # argmin ignores the recipe
    step = next_step(list(states.values()))
    assert step["stage"] in ("grouping", "training")
    _edit_config(ws_dir, lambda d: d["estimator"].update(subsets=2))
    states = _state(ws)
    assert states["gradients", "topics"]["state"] == "fresh"
    assert states["affinity", "affinity"]["state"] == "stale"
    assert states["grouping", "chosen"]["state"] == "stale"
    assert next_step(list(states.values()))["argvs"] == [["affinity"]]


def test_affinity_fingerprint_matches_the_engine(real_ws):
    """After the engine recomputes the affinity for new settings, the status is fresh again."""
    ws_dir = copy_workspace(real_ws, "status_affinity")
    _edit_config(ws_dir, lambda d: d["estimator"].update(subsets=2))
    cli("affinity", "--workspace", ws_dir)
    assert _state(Workspace(ws_dir))["affinity", "affinity"]["state"] == "fresh"


def test_jobs_override_the_file_state(real_ws):
    ws_dir = copy_workspace(real_ws, "status_jobs")
    ws = Workspace(ws_dir)
    shutil.rmtree(ws_dir / "features" / "topics")
    store = JobStore(ws_dir / "jobs.db")  # queued only: nothing is started here
    job = store.submit("g", "gradients:topics", ["gradients", "--task", "topics"])
    states = _state(ws, read_jobs(ws))
    assert states["gradients", "topics"]["state"] == "queued"
    assert states["gradients", "reviews_a"]["state"] == "fresh"
    step = next_step(list(states.values()))
    assert step["busy"] and step["argvs"] == []
    store.mark_failed(job, "boom")
    states = _state(ws, read_jobs(ws))
    assert states["gradients", "topics"]["state"] == "failed"
    assert "boom" in states["gradients", "topics"]["detail"]
    counts = job_counts(read_jobs(ws))
    assert counts == {"queued": 0, "running": 0, "done": 0, "failed": 1, "cancelled": 0}


def test_job_targets_parse_the_argv():
    def job(*argv):
        return {"argv": list(argv)}

    assert job_targets(job("gradients", "--task", "a", "--task", "b")) == [
        ("gradients", "a"),
        ("gradients", "b"),
    ]
    assert job_targets(job("gradients", "--workspace", "w")) == [("gradients", "*")]
    assert job_targets(job("train", "--adapter", "group-1")) == [("training", "group-1")]
    assert job_targets(job("train")) == [("training", "*")]
    assert job_targets(job("evaluate", "--zero-shot")) == [("evaluation", "zero_shot")]
    assert job_targets(job("group", "--move", "a:1")) == [("grouping", "chosen")]
    assert job_targets(job("validate-estimate", "--subsets", "3")) == [("validation", "validation")]
    assert job_targets(job("train-subset", "--task", "b", "--task", "a")) == [("validation", "a+b")]
    assert job_targets(job("train-subset", "--task", "a", "--seed", "1")) == [
        ("validation", "a (seed 1)")
    ]
    assert job_targets(job("mix", "--group", "1", "--suggest")) == [("mixing", "1")]
    assert job_targets(job("mix", "--train", "--weight", "a=2")) == [("mixing", "all")]


def test_submit_step_queues_the_cli_command(real_ws, monkeypatch):
    monkeypatch.setenv("GROUPTUNE_MAX_JOBS", "0")
    ws = Workspace(copy_workspace(real_ws, "status_submit"))
    first = submit_step(ws, ["gradients", "--task", "topics"])
    second = submit_step(ws, ["affinity"], depends_on=[first])
    jobs = read_jobs(ws)
    assert [j["step"] for j in jobs] == ["gradients:topics", "affinity"]
    assert jobs[1]["argv"] == ["affinity", "--workspace", str(ws.root)]
    assert jobs[1]["depends_on"] == [first] and jobs[1]["id"] == second
    assert jobs[0]["cwd"] == str(ROOT)
    frame = jobs_frame(jobs)
    assert frame["id"].tolist() == [second, first]  # newest first
    assert cli_text(["affinity"], ws) == f"grouptune affinity --workspace {ws.root}"


def test_resolved_config_loads_the_same_tasks_from_anywhere(real_ws):
    from core.config import load_config

    ws = Workspace(real_ws)
    cfg = ws.load_config()
    path = resolved_config(ws, cfg)
    again = load_config(path)  # resolved against its own folder, as `grouptune run` does
    assert [t.content_hash() for t in load_tasks(again)] == [
        t.content_hash() for t in load_tasks(cfg)
    ]
    assert again.model_dump(exclude={"data", "tasks", "base_dir"}) == cfg.model_dump(
        exclude={"data", "tasks", "base_dir"}
    )


def test_the_run_drivers_config_snapshot_keeps_everything_fresh(real_ws):
    """`grouptune run <ws>/config.resolved.yaml` rewrites config.yaml with absolute paths:
    the same experiment, so nothing may turn stale."""
    from core.config import load_config

    ws = Workspace(copy_workspace(real_ws, "status_resolved"))
    ws.save_config(load_config(resolved_config(ws, ws.load_config())))
    assert "tasks" in ws.load_config().data.root  # now absolute
    assert {r["state"] for r in _state(ws).values()} == {"fresh"}


def test_run_everything_job_finishes_the_pipeline(real_ws):
    """The Home page's "Run everything": the `grouptune run` driver job (slots 0) submits the
    remaining steps as jobs and waits for them; afterwards every stage is fresh."""
    from core.jobs import wait

    ws_dir = copy_workspace(real_ws, "status_run")
    for path in ("report.json", "eval/ensemble.json", "adapters/group-1"):
        shutil.rmtree(ws_dir / path) if (ws_dir / path).is_dir() else (ws_dir / path).unlink()
    ws = Workspace(ws_dir)
    job = submit_run(ws, ws.load_config())
    assert wait(ws.root, [job], timeout=600)[job]["state"] == "done"
    jobs = read_jobs(ws)
    assert all(j["state"] == "done" for j in jobs), [(j["step"], j["error"]) for j in jobs]
    assert {"train:baseline", "evaluate", "report"} <= {j["step"] for j in jobs}
    assert {r["state"] for r in _state(ws, jobs).values()} == {"fresh"}


def test_tail_log(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(500)))
    assert tail_log(log, 3) == "line 497\nline 498\nline 499"
    assert tail_log(tmp_path / "none.log") == ""


# --- datasets --------------------------------------------------------------------------------------
def test_sample_task_tables():
    yelp = load_one_task("yelp", None, {})
    balance = label_balance(yelp)
    for split in ("train", "val", "test"):
        rows = yelp.rows(split)
        counts = balance[balance["split"] == split].set_index("label")["rows"].to_dict()
        assert counts == {lab: sum(r["label"] == lab for r in rows) for lab in yelp.labels}
    lengths = word_lengths(yelp)
    assert len(lengths) == sum(len(yelp.rows(s)) for s in ("train", "val", "test"))
    assert lengths["words"].iloc[0] == len(yelp.render(yelp.rows("train")[0]).split())
    preview = preview_rows(yelp, n=3)
    assert preview["text"].tolist() == [r["text"] for r in yelp.rows("train")[:3]]
    assert set(preview["answer"]) <= set(yelp.answer_words)
    assert "yelp" in sample_task_names() and len(sample_task_names()) == 10


def test_shared_answer_words():
    tasks = [load_one_task(t, None, {}) for t in ("yelp", "imdb", "spam")]
    assert shared_answer_words(tasks) == [
        {"tasks": ["yelp", "imdb"], "words": [" negative", " positive"]}
    ]


def test_upload_is_validated_and_stored(tmp_path):
    ws = Workspace(tmp_path / "ws")
    rows = "".join(f'{{"text": "row {i}", "label": "{"xy"[i % 2]}"}}\n' for i in range(10))
    task = save_upload(ws, "mine", "data.jsonl", rows.encode())
    assert task.labels == {"x": " x", "y": " y"} and sum(len(v) for v in task.splits.values()) == 10
    assert uploaded_tasks(ws) == {"mine": ws.path("uploads", "mine.jsonl")}
    with pytest.raises(DataError, match="row 1.*invalid JSON"):
        save_upload(ws, "bad", "bad.jsonl", b"{not json\n")
    assert "bad" not in uploaded_tasks(ws)
    with pytest.raises(DataError, match="unsupported file type"):
        save_upload(ws, "code", "evil.py", b"print(1)")
    with pytest.raises(DataError, match="not allowed"):
        save_upload(ws, "../escape", "x.csv", b"text,label\n")


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_upload_with_a_column_mapping_and_a_failed_reupload(tmp_path):
    from conftest import write_tweets_csv

    ws = Workspace(tmp_path / "ws")
    data = write_tweets_csv(tmp_path / "tweets.csv").read_bytes()
    form = {
        "columns": {"text": "tweet", "text_pair": None, "label": "author"},
        "template": "Tweet: {text}\nAuthor:",
        "labels": {"ann": " one", "bob": " two"},
    }
    task = save_upload(ws, "tweets", "my tweets.csv", data, **form)
    assert task.source == str(ws.path("uploads", "tweets.csv"))
    spec = upload_spec(ws.path("uploads", "tweets.csv"))
    assert spec == {**form, "description": "user data from my tweets.csv", "path": task.source}
    again = load_one_task("tweets", None, uploaded_tasks(ws))
    assert again.content_hash() == task.content_hash()  # the stored upload is the draft
    form_cfg = {"name": "x", "tasks": ["tweets"], "model": "tiny-llama", "quantization": "none"}
    form_cfg |= {"max_tokens": 48, "k": 8, "subsets": 2, "subset_size": 2, "epochs": 1}
    cfg = build_config(form_cfg, None, uploaded_tasks(ws))
    assert cfg.tasks[0].columns.text == "tweet" and cfg.tasks[0].labels == form["labels"]
    before = _files(ws.root)
    bad = data.replace(b'"The food was awful, tweet 4"', b'"The food was awful, tweet 4')
    with pytest.raises(
        DataError, match=r"my tweets.csv, row 5: a quote .* is closed on line 7 .* never closed"
    ):
        save_upload(ws, "tweets", "my tweets.csv", bad, **form)
    with pytest.raises(DataError, match=r"field 'author': empty label"):
        save_upload(ws, "tweets", "t.jsonl", b'{"tweet": "a", "author": ""}\n', **form)
    assert _files(ws.root) == before  # a failed upload changes nothing


def test_build_config_validates_and_makes_paths_absolute(real_ws, tmp_path):
    base = Workspace(real_ws).load_config()
    form = {
        "name": "copy",
        "tasks": ["reviews_a", "topics", "spam"],
        "model": "tiny-llama",
        "quantization": "none",
        "max_train": 12,
        "max_val": 0,
        "max_test": 0,
        "max_tokens": 48,
        "k": 16,
        "subsets": 4,
        "subset_size": 2,
        "m": 0,
        "epochs": 1,
    }
    cfg = build_config(form, base, {})
    assert cfg.task_names == ["reviews_a", "topics", "spam"]
    assert cfg.data.max_train == 12 and cfg.data.max_val is None and cfg.grouping.m is None
    assert cfg.features.k == 16 and cfg.training.lr == base.training.lr  # the rest is kept
    ws = save_experiment(cfg, tmp_path / "elsewhere" / "copy")
    again = ws.load_config()
    assert [t.name for t in load_tasks(again)] == ["reviews_a", "topics", "spam"]
    assert build_config({**form, "k": 0}, base, {}).features.k is None  # 0: the default
    with pytest.raises(ConfigError, match="features.k"):
        build_config({**form, "k": -4}, base, {})


def test_workspaces_are_listed(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.yaml").write_text("name: a\n")
    (tmp_path / "b").mkdir()  # no config: not an experiment
    monkeypatch.setenv("GROUPTUNE_WORKSPACES", str(tmp_path))
    monkeypatch.setenv("GROUPTUNE_WORKSPACE", str(tmp_path / "x"))
    assert list_workspaces() == [str(tmp_path / "x"), str(tmp_path / "a")]


# --- affinity and groups -----------------------------------------------------------------------------
def test_clustered_order_on_a_block_matrix():
    names = ["a", "b", "c", "d", "e"]
    blocks = {"a": 0, "c": 0, "e": 0, "b": 1, "d": 1}
    T = np.array(
        [
            [0.0 if x == y else (1.0 if blocks[x] == blocks[y] else -1.0) for y in names]
            for x in names
        ]
    )
    order = clustered_order(T, names)
    assert {frozenset(order[:3]), frozenset(order[3:])} == {frozenset("ace"), frozenset("bd")} or {
        frozenset(order[:2]),
        frozenset(order[2:]),
    } == {frozenset("ace"), frozenset("bd")}
    assert clustered_order(T, names, [["b", "d"], ["a", "c", "e"]])[:2] in (
        ["b", "d"],
        ["d", "b"],
    )


def test_affinity_view_and_evidence_are_the_files(real_ws):
    ws = Workspace(real_ws)
    aff = json.loads((real_ws / "affinity.json").read_text())
    view = affinity_view(ws)
    names = aff["tasks"]
    T = pd.DataFrame(aff["affinity"], index=names, columns=names)
    pd.testing.assert_frame_equal(view["T"], T.loc[view["order"], view["order"]])
    assert sorted(view["order"]) == sorted(names)
    chosen = json.loads((real_ws / "groupings" / "chosen.json").read_text())
    assert view["order"] == [
        t for g in chosen["groups"] for t in sorted(g, key=view["order"].index)
    ]
    table = pd.read_csv(real_ws / "estimates" / "results.csv")
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ev = pair_evidence(ws, a, b)
            both = table["subset"].map(lambda s, a=a, b=b: {a, b} <= set(s.split("+")))
            assert len(ev) == int((both & table["task"].isin([a, b])).sum()) > 0
            # the affinity is the mean z of each side, averaged (core.estimate.affinity's definition)
            sides = [ev.loc[ev["task"] == t, "z"].mean() for t in (a, b)]
            assert np.mean(sides) == pytest.approx(T.loc[a, b], abs=1e-9)
    a, b = strongest_pair(view["T"])
    off = np.abs(T.to_numpy()[~np.eye(len(T), dtype=bool)])
    assert a != b and abs(T.loc[a, b]) == off.max()
    settings = estimator_settings(ws.load_config(), view).set_index("setting")
    assert (
        settings.loc["subsets K", "config"] == "3"
        and settings.loc["subsets K", "affinity.json"] == "3"
    )


def test_sweep_and_groups_tables(real_ws):
    ws = Workspace(real_ws)
    entries = json.loads((real_ws / "groupings" / "sweep.json").read_text())["entries"]
    assert sweep_entries(ws) == entries and sweep_fresh(ws.load_config(), ws)
    frame = sweep_frame(entries)
    assert frame["predicted mean accuracy"].tolist() == [e["mean_accuracy"] for e in entries]
    chosen = json.loads((real_ws / "groupings" / "chosen.json").read_text())
    groups = groups_frame(chosen["groups"], chosen["predicted"]).set_index("task")
    for task, p in chosen["predicted"].items():
        assert groups.loc[task, "predicted accuracy"] == p["accuracy"]
        assert groups.loc[task, "predicted gain"] == pytest.approx(
            p["accuracy"] - p["base_accuracy"]
        )
    assert mean_predicted(chosen["predicted"]) == pytest.approx(chosen["mean_accuracy"])


# --- training --------------------------------------------------------------------------------------
def test_training_tables_are_metrics_jsonl(real_ws):
    ws = Workspace(real_ws)
    records = [
        json.loads(x)
        for x in (real_ws / "adapters/baseline/metrics.jsonl").read_text().splitlines()
    ]
    steps, val = read_training_metrics(ws, "baseline")
    assert steps["loss"].tolist() == [r["loss"] for r in records if r["kind"] == "step"]
    assert steps["task"].tolist() == [r["task"] for r in records if r["kind"] == "step"]
    last = [r for r in records if r["kind"] == "val"][-1]
    at_last = val[val["epoch"] == last["epoch"]].set_index("task")
    assert at_last.loc["mean", "accuracy"] == last["mean_accuracy"]
    assert at_last.loc["topics", "accuracy"] == last["val"]["topics"]["accuracy"]
    frame = adapters_frame(ws, ws.load_config()).set_index("adapter")
    assert frame.loc["group-0", "tasks"] == "reviews_a, reviews_b"
    assert read_training_metrics(ws, "group-9")[0].empty


def test_partial_adapter(real_ws):
    ws_dir = copy_workspace(real_ws, "status_partial")
    (ws_dir / "adapters" / "group-1" / "grouptune.json").unlink()
    row = _state(Workspace(ws_dir))["training", "group-1"]
    assert row["state"] == "partial" and row["detail"] == "epoch 1/1"
    assert os.path.exists(ws_dir / "adapters" / "group-1" / "checkpoint")
