"""Every dashboard page, headless (streamlit.testing.v1.AppTest): with no experiment, with a
config but nothing computed, and with a workspace the real engine made on a tiny model; the
numbers a page shows are checked against the workspace's files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from dashboard import (
    PAGES,
    chart_data,
    cli,
    copy_workspace,
    open_page,
    texts,
    write_experiment,
)

from core.report.tables import (
    boosting_table,
    gain_text,
    headline,
)
from core.views.groups import mean_predicted
from core.views.jobs import read_jobs
from core.workspace import Workspace


@pytest.fixture
def no_jobs_start(monkeypatch):
    """Jobs are queued but no worker starts (the limit is 0): tests see what was submitted."""
    monkeypatch.setenv("GROUPTUNE_MAX_JOBS", "0")


@pytest.mark.parametrize("page", PAGES)
def test_pages_without_a_config(tmp_path, monkeypatch, page):
    monkeypatch.setenv("GROUPTUNE_WORKSPACES", str(tmp_path / "none"))
    at = open_page(tmp_path / "empty", page, monkeypatch)
    shown = " ".join(texts(at, "info"))
    if page != "datasets":
        assert "grouptune init" in shown and "Datasets" in shown  # what to do next
    else:
        assert at.multiselect[0].options and "yelp" in at.multiselect[0].options


@pytest.fixture(scope="module")
def config_only(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("config_only")
    config = write_experiment(root)
    cli("init", "--config", config, "--workspace", root / "ws")
    return root / "ws"


@pytest.mark.parametrize("page", PAGES)
def test_pages_with_nothing_computed(config_only, monkeypatch, page):
    at = open_page(config_only, page, monkeypatch)
    shown = " ".join(texts(at, "info") + texts(at, "code") + texts(at, "caption"))
    expected = {
        "home": "grouptune gradients --task reviews_a",
        "datasets": "one answer word per label",
        "gradients": "grouptune gradients --task topics",
        "affinity": "grouptune affinity",
        "groups": "grouptune group",
        "training": "grouptune train --adapter baseline",
        "compare": "grouptune evaluate",
        "try_it": "grouptune train --workspace",
    }[page]
    assert expected in shown
    if page == "datasets":  # the experiment's own tasks, preselected
        assert at.multiselect[0].value == ["reviews_a", "reviews_b", "topics"]
    if page == "gradients":
        table = at.dataframe[0].value
        assert table["status"].tolist() == ["missing"] * 3


# --- (b) a workspace the real engine made -----------------------------------------------------
def test_home_shows_the_state_of_every_stage(real_ws, monkeypatch):
    at = open_page(real_ws, "home", monkeypatch)
    report = json.loads((real_ws / "report.json").read_text())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Tasks"] == "3"
    assert metrics["Groups (m)"] == "2"
    assert metrics["Ensemble mean accuracy"] == f"{report['accuracy']['ensemble']['mean']:.3f}"
    assert any(gain_text(report["gain"]) in c for c in texts(at, "caption"))
    parts = headline(report)["gain_parts_text"]  # the groups' share and boosting's
    assert parts and any(parts in c for c in texts(at, "caption"))
    # the story: the groups, why (affinity within vs across groups), predicted vs real
    chosen = json.loads((real_ws / "groupings" / "chosen.json").read_text())
    aff = json.loads((real_ws / "affinity.json").read_text())
    names, T = aff["tasks"], np.asarray(aff["affinity"])
    where = {t: i for i, g in enumerate(chosen["groups"]) for t in g}
    within = [T[i, j] for i in range(3) for j in range(i + 1, 3)
              if where[names[i]] == where[names[j]] and aff["counts"][i][j] > 0]  # fmt: skip
    markdown = " ".join(texts(at, "markdown"))
    assert f"mean affinity of {np.mean(within):+.2f}" in markdown
    story = next(d.value for d in at.dataframe if "real val accuracy" in d.value.columns)
    for row in story.itertuples():
        rec = json.loads(
            (real_ws / "adapters" / f"group-{row.group}" / "grouptune.json").read_text()
        )
        assert row._4 == rec["val_metrics"][row.task]["accuracy"]
        assert row._3 == chosen["predicted"][row.task]["accuracy"]
    rows = next(d.value for d in at.dataframe if "stage" in d.value.columns)
    assert list(zip(rows["stage"], rows["item"], strict=True)) == [
        *[("gradients", t) for t in ("reviews_a", "reviews_b", "topics")],
        ("affinity", "affinity"),
        ("grouping", "chosen"),
        *[("training", a) for a in ("group-0", "group-1", "baseline")],
        ("boosting", "boost-0"),
        *[("evaluation", m) for m in ("zero_shot", "baseline", "ensemble")],
        ("report", "report"),
    ]
    assert set(rows["state"]) == {"fresh"}
    assert "Everything is up to date" in texts(at, "success")[0]


def test_home_next_step_submits_the_jobs(real_ws, monkeypatch, no_jobs_start):
    ws = copy_workspace(real_ws, "home_next")
    shutil.rmtree(ws / "features" / "topics")
    at = open_page(ws, "home", monkeypatch)
    assert f"grouptune gradients --task topics --workspace {ws}" in texts(at, "code")
    at.button(key="home_next").click().run()
    jobs = read_jobs(Workspace(ws))
    assert [j["argv"] for j in jobs] == [["gradients", "--task", "topics", "--workspace", str(ws)]]
    assert jobs[0]["state"] == "queued"
    at.run()
    rows = next(d.value for d in at.dataframe if "stage" in d.value.columns)
    assert rows.set_index("item").loc["topics", "state"] == "queued"
    at.button(key="home_all").click().run()
    driver = read_jobs(Workspace(ws))[-1]
    try:
        assert driver["argv"][0] == "run" and driver["resources"] == {"slots": 0}
        assert Path(driver["argv"][1]) == ws / "config.resolved.yaml"
    finally:  # a driver starts whatever the limit: stop it (it would wait on queued jobs)
        from core.jobs import cancel

        assert cancel(ws, driver["id"], grace_s=5)["state"] in ("cancelled", "failed", "done")


def test_datasets_page_shows_the_tasks_and_saves_a_new_experiment(real_ws, monkeypatch, tmp_path):
    monkeypatch.setenv("GROUPTUNE_WORKSPACES", str(tmp_path / "experiments"))
    at = open_page(real_ws, "datasets", monkeypatch)
    overview = at.dataframe[0].value.set_index("task")
    assert overview.loc["reviews_a", ["train", "val", "test"]].tolist() == [16, 8, 8]
    balance = chart_data(at, 0)["data"]
    assert {tr["name"]: tr["y"] for tr in balance}["train"] == [8, 8]
    assert any("**reviews_a** and **reviews_b**" in w for w in texts(at, "warning"))
    at.multiselect[0].select("yelp").run()
    at.text_input[1].set_value("browsed")  # [0] is the upload's task name; no run: a form
    at.button(key="FormSubmitter:ds_form-Save as a new experiment").click().run()
    assert not at.exception and not at.error, texts(at, "error")
    saved = Workspace(tmp_path / "experiments" / "browsed").load_config()
    assert saved.task_names == ["reviews_a", "reviews_b", "topics", "yelp"]
    assert at.session_state["workspace"] == str(tmp_path / "experiments" / "browsed")
    from core.data.sources import load_tasks

    assert [t.name for t in load_tasks(saved)] == saved.task_names  # paths resolve


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_datasets_upload_is_checked_and_kept_in_the_workspace(config_only, monkeypatch):
    ws = copy_workspace(config_only, "uploads")
    at = open_page(ws, "datasets", monkeypatch)
    at.text_input[0].set_value("mine").run()
    before = _files(ws)
    bad = b"text,label\nfine,a\n ,b\n"
    at.file_uploader[0].set_value(("mine.csv", bad, "text/csv")).run()
    assert "mine.csv, row 2, field 'text': empty or non-text value" in texts(at, "error")[0]
    assert at.button(key="ds_up_add").disabled  # shown before anything is saved
    quote = b'text,label\nfine,a\n"never closed,b\nok,a\n'
    at.file_uploader[0].set_value(("mine.csv", quote, "text/csv")).run()
    assert 'mine.csv, row 2: a quote (") opened on line 3 is never closed' in texts(at, "error")[0]
    assert _files(ws) == before  # a failed upload leaves the experiment exactly as it was
    good = "text,label\n" + "".join(f"row {i} fine,{'ab'[i % 2]}\n" for i in range(20))
    at.file_uploader[0].set_value(("mine.csv", good.encode(), "text/csv")).run()
    at.button(key="ds_up_add").click().run()
    assert "Added mine: 20 rows" in texts(at, "success")[0]
    assert (ws / "uploads" / "mine.csv").read_text() == good
    assert "mine" in at.multiselect[0].options


def test_datasets_upload_maps_a_users_csv_and_jsonl(config_only, monkeypatch, tmp_path):
    """Issue 17's done-when, through the page: a CSV of id,tweet,author,date and a JSONL of
    {sentence, gold} become tasks (columns picked from a preview, answer words set, one prompt
    and its token count shown), are saved into the experiment, and run through gradients and
    affinity on the tiny model."""
    import yaml
    from conftest import write_sentences_jsonl, write_tweets_csv

    from core.data.tokens import count_tokens

    ws = copy_workspace(config_only, "byod")
    at = open_page(ws, "datasets", monkeypatch)
    csv_bytes = write_tweets_csv(tmp_path / "tweets.csv").read_bytes()
    at.text_input[0].set_value("tweets").run()
    at.file_uploader[0].set_value(("tweets.csv", csv_bytes, "text/csv")).run()
    preview = at.dataframe[0].value
    assert preview.columns.tolist() == ["id", "tweet", "author", "date"]
    picked = {k: at.selectbox(key=f"ds_up_{k}").value for k in ("text", "pair", "label", "split")}
    assert picked == {"text": "tweet", "pair": None, "label": "author", "split": None}
    counts = at.dataframe[1].value
    assert dict(zip(counts["label"], counts["rows"], strict=True)) == {"ann": 16, "bob": 16}
    assert any("ignored column(s) 'id', 'date'" in w for w in texts(at, "warning"))
    at.text_area(key="ds_up_template:False").set_value("Tweet: {text}\nAuthor:")
    at.text_input(key="ds_up_word:author:ann").set_value(" one")
    at.text_input(key="ds_up_word:author:bob").set_value(" two").run()
    prompt = at.code[0].value
    assert prompt.startswith("Tweet: The food was") and prompt.endswith("\nAuthor:")
    n = count_tokens("tiny-llama", prompt)
    assert f"as tiny-llama sees it ({n} tokens)" in " ".join(texts(at, "caption"))
    assert not [w for w in texts(at, "warning") if "tokens for tiny-llama" in w]
    entry = yaml.safe_load(at.code[1].value)[0]  # the CLI twin: the same task in a config
    assert entry["columns"] == {"text": "tweet", "text_pair": None, "label": "author"}
    assert not (ws / "uploads").exists()  # nothing saved before Add
    at.button(key="ds_up_add").click().run()
    assert "Added tweets: 32 rows" in texts(at, "success")[0]

    jsonl = write_sentences_jsonl(tmp_path / "sentences.jsonl").read_bytes()
    at.text_input[0].set_value("sentences").run()
    at.file_uploader[0].set_value(("sentences.jsonl", jsonl, "application/json")).run()
    assert at.selectbox(key="ds_up_text").value == "sentence"
    assert at.selectbox(key="ds_up_label").value == "gold"
    words = {k: at.text_input(key=f"ds_up_word:gold:{k}").value for k in ("0", "1")}
    assert words == {"0": "0", "1": "1"}  # ' 0' is two tokens for this tokenizer, '0' one
    at.text_input(key="ds_up_word:gold:0").set_value(" negative")
    at.text_input(key="ds_up_word:gold:1").set_value(" very good").run()  # two tokens: scored
    assert any("' very good' (label `1`) is 2 tokens for tiny-llama: it is scored by the sum"
               in i for i in texts(at, "info"))  # fmt: skip
    at.button(key="ds_up_add").click().run()
    assert "Added sentences: 32 rows" in texts(at, "success")[0]

    at.multiselect[0].set_value(["tweets", "sentences", "topics"]).run()
    at.button(key="FormSubmitter:ds_form-Save").click().run()
    assert not at.exception and not at.error, texts(at, "error")
    from core.data.sources import load_tasks

    cfg = Workspace(ws).load_config()
    tweets, sentences, _ = load_tasks(cfg)
    assert tweets.labels == {"ann": " one", "bob": " two"} and tweets.template.startswith("Tweet:")
    assert sentences.labels == {"0": " negative", "1": " very good"}
    cli("init", "--config", ws / "config.yaml", "--workspace", ws)
    grads = cli("gradients", "--workspace", ws)
    assert {t: r["rows_computed"] for t, r in grads.items()} == {
        "tweets": 24, "sentences": 24, "topics": 24,
    }  # fmt: skip
    assert cli("affinity", "--workspace", ws)["tasks"] == ["tweets", "sentences", "topics"]


def test_gradients_page_matches_the_store(real_ws, monkeypatch, no_jobs_start):
    from core.gradients.store import store_status

    ws = copy_workspace(real_ws, "grads")
    shutil.rmtree(ws / "features" / "reviews_b")
    at = open_page(ws, "gradients", monkeypatch)
    w = Workspace(ws)
    table = at.dataframe[0].value.set_index("task")
    assert table["status"].to_dict() == store_status(w, w.load_config())
    assert {m.label: m.value for m in at.metric}["Tasks up to date"] == "2 / 3"
    at.button(key="gr_all").click().run()
    assert [j["argv"][:3] for j in read_jobs(w)] == [["gradients", "--task", "reviews_b"]]


def test_affinity_page_plots_affinity_json(real_ws, monkeypatch):
    at = open_page(real_ws, "affinity", monkeypatch)
    aff = json.loads((real_ws / "affinity.json").read_text())
    heat = chart_data(at, 0)["data"][0]
    order = heat["x"]
    idx = [aff["tasks"].index(t) for t in order]
    assert heat["z"] == [[aff["affinity"][i][j] for j in idx] for i in idx]
    assert heat["customdata"] == [[aff["counts"][i][j] for j in idx] for i in idx]
    evidence = at.dataframe[0].value
    a, b = at.selectbox(key="af_a").value, at.selectbox(key="af_b").value
    table = pd.read_csv(real_ws / "estimates" / "results.csv")  # the rows behind the cell
    both = table["subset"].map(lambda s: {a, b} <= set(s.split("+")))
    behind = table[both & table["task"].isin([a, b])]
    assert evidence["subset_id"].tolist() == behind["subset_id"].tolist()
    assert evidence["task"].tolist() == behind["task"].tolist()
    assert evidence["loss"].tolist() == behind["loss"].tolist()
    value = aff["affinity"][aff["tasks"].index(a)][aff["tasks"].index(b)]
    assert at.metric[0].value == f"{value:.3f}"
    assert any("**reviews_a** and **reviews_b**" in w for w in texts(at, "warning"))


def test_affinity_settings_are_saved_and_reestimated(real_ws, monkeypatch, no_jobs_start):
    ws = copy_workspace(real_ws, "aff_settings")
    at = open_page(ws, "affinity", monkeypatch)
    at.number_input[1].set_value(2)  # subsets K
    at.button(key="FormSubmitter:af_form-Save and re-estimate").click().run()
    cfg = Workspace(ws).load_config()
    assert cfg.estimator.subsets == 2 and cfg.features.k == 32
    assert [j["argv"][0] for j in read_jobs(Workspace(ws))] == ["affinity", "group"]


def test_groups_page_what_if_and_save(real_ws, monkeypatch):
    from core.estimate.whatif import WhatIf

    ws = copy_workspace(real_ws, "groups")
    w = Workspace(ws)
    at = open_page(ws, "groups", monkeypatch)
    sweep = json.loads((ws / "groupings" / "sweep.json").read_text())["entries"]
    chosen = json.loads((ws / "groupings" / "chosen.json").read_text())
    shown = at.dataframe[0].value
    m2 = [e for e in sweep if e["m"] == 2]
    assert shown["predicted mean accuracy"].tolist() == [e["mean_accuracy"] for e in m2]
    lines = {tr["name"]: tr["y"] for tr in chart_data(at, 0)["data"]}
    assert lines["sdp"] == [e["mean_accuracy"] for e in sweep if e["method"] == "sdp"]
    assert at.metric[1].value == f"{chosen['mean_accuracy']:.3f}"
    at.selectbox(key="grp_task").set_value("topics")
    at.selectbox(key="grp_to").set_value(0)
    at.button(key="grp_move").click().run()
    groups = [["reviews_a", "reviews_b", "topics"]]
    predicted = WhatIf.from_workspace(w.load_config(), w).predict(groups)
    assert at.metric[1].value == f"{mean_predicted(predicted):.3f}"
    assert f"grouptune group --move topics:0 --workspace {ws}" in texts(at, "code")
    at.button(key="grp_save").click().run()
    saved = json.loads((ws / "groupings" / "chosen.json").read_text())
    assert saved["groups"] == groups and saved["method"] == "edited"


def test_training_page_plots_metrics_jsonl(real_ws, monkeypatch):
    at = open_page(real_ws, "training", monkeypatch, tr_curve="group-0")
    lines = [
        json.loads(x) for x in (real_ws / "adapters/group-0/metrics.jsonl").read_text().splitlines()
    ]
    loss = chart_data(at, 0)["data"][0]
    assert loss["y"] == [r["loss"] for r in lines if r["kind"] == "step"]
    val = {tr["name"]: tr["y"] for tr in chart_data(at, 1)["data"]}
    last = [r for r in lines if r["kind"] == "val"][-1]
    assert val["reviews_a"][-1] == last["val"]["reviews_a"]["accuracy"]
    adapters = at.dataframe[0].value.set_index("adapter")
    assert adapters["state"].tolist() == ["fresh"] * 3
    record = json.loads((real_ws / "adapters/baseline/grouptune.json").read_text())
    assert adapters.loc["baseline", "val accuracy"] == record["val_metrics"]["mean"]["accuracy"]


def test_training_page_queues_stops_and_resumes(real_ws, monkeypatch, no_jobs_start):
    ws = copy_workspace(real_ws, "training")
    shutil.rmtree(ws / "adapters" / "group-1")
    at = open_page(ws, "training", monkeypatch)
    at.button(key="tr_all").click().run()
    w = Workspace(ws)
    (job,) = read_jobs(w)
    assert job["argv"][:3] == ["train", "--adapter", "group-1"] and job["state"] == "queued"
    at.run()
    at.selectbox(key="tr_job").set_value(job["id"])
    at.button(key="tr_stop").click().run()
    assert read_jobs(w)[0]["state"] == "cancelled"
    at.button(key="tr_resume").click().run()
    assert not at.error, texts(at, "error")
    assert read_jobs(w)[0]["state"] == "queued"


def test_compare_page_matches_report_and_exports(real_ws, monkeypatch):
    ws = copy_workspace(real_ws, "compare")
    at = open_page(ws, "compare", monkeypatch)
    report = json.loads((ws / "report.json").read_text())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Group ensemble"] == f"{report['accuracy']['ensemble']['mean']:.3f}"
    assert metrics["Single QLoRA adapter"] == f"{report['accuracy']['baseline']['mean']:.3f}"

    def by_task(metric):  # the page's table, from report.json directly
        models = {"Group ensemble": "ensemble", "Single QLoRA adapter": "baseline"}
        return {
            label: [report[metric][m][t] for t in [*report["tasks"], "mean"]]
            for label, m in models.items()
        }

    shown = at.dataframe[0].value
    assert {k: shown[k].tolist() for k in by_task("accuracy")} == by_task("accuracy")
    bars = {tr["name"]: tr["y"] for tr in chart_data(at, 0)["data"]}
    assert bars["Group ensemble"] == [
        report["accuracy"]["ensemble"][t] for t in [*report["tasks"], "mean"]
    ]
    costs, flops = at.dataframe[1].value, report["flops"]
    assert costs.loc["Single QLoRA adapter", "training FLOPs"] == flops["baseline_training"]
    ensemble_training = sum(flops[s] for s in ("gradients", "estimation", "group_training"))
    assert costs.loc["Group ensemble", "training FLOPs"] == pytest.approx(ensemble_training)
    per_example = flops["ensemble_inference_per_example"]
    assert costs.loc["Group ensemble", "inference FLOPs / example"] == per_example
    head = headline(report)
    shown, (low, high) = " ".join(texts(at, "markdown")), report["gain"]["ci"]
    assert head["gain_text"] in shown and f"[{low:+.1f}, {high:+.1f}]" in shown
    assert head["gain_parts_text"] in shown
    weights = at.dataframe[2].value
    assert (
        weights.loc["Single QLoRA adapter", "mean accuracy"]
        == report["accuracy"]["baseline"]["mean"]
    )
    for kind, acc in report["by_weights"].items():  # own routing and fitted weights
        assert acc in weights["mean accuracy"].tolist(), kind
    if report["boosting"]:
        pd.testing.assert_frame_equal(at.dataframe[3].value, boosting_table(report))
    at.radio(key="cmp_metric").set_value("ece").run()
    shown = at.dataframe[0].value
    assert {k: shown[k].tolist() for k in by_task("ece")} == by_task("ece")
    at.button(key="cmp_export").click().run()
    assert (ws / "exports" / "report.html").is_file()
    assert len(at.download_button) == 2


# --- the dashboard never loads torch ------------------------------------------------------------
def test_pages_import_no_torch(real_ws):
    code = f"""
import sys
from streamlit.testing.v1 import AppTest
import os
os.environ["GROUPTUNE_WORKSPACE"] = {str(real_ws)!r}
at = AppTest.from_file({str(ROOT / "app.py")!r}, default_timeout=60).run()
for page in {PAGES[1:]!r}:
    at.switch_page(f"pages/{{page}}.py").run()
    assert not at.exception, (page, at.exception)
print("torch" in sys.modules, "transformers" in sys.modules, "peft" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "False", "False"]
