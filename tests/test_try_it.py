"""The Try it page (AppTest) on the workspace the real engine made: typing a text queues a
real `grouptune predict --explain` job; once it is done the page shows what its file holds
(the prompt the model saw, the answer and its probabilities, each adapter's vote and weight,
the single adapter's answer), the same as `grouptune predict` from a terminal; an uploaded
file is read with the task's columns; a failed job is reported."""

from __future__ import annotations

import json

from conftest import ROOT
from dashboard import cli, copy_workspace, open_page, texts

from core.jobs import wait
from core.views import tryit
from core.views.jobs import read_jobs
from core.workspace import Workspace

TEXT = "The team won the game on Sunday."


def test_try_it_answers_a_typed_text_through_a_predict_job(real_ws, monkeypatch):
    ws = copy_workspace(real_ws, "tryit")
    at = open_page(ws, "try_it", monkeypatch)
    assert at.selectbox(key="try_task").options == ["reviews_a", "reviews_b", "topics"]
    at.selectbox(key="try_task").set_value("topics").run()
    at.text_area(key="try_text").input(TEXT).run()
    assert f"News: {TEXT}\nTopic:" in texts(at, "code")  # the rendered prompt, before any job
    assert f"grouptune predict '{TEXT}' --task topics --explain --workspace {ws}" in texts(
        at, "code"
    )
    at.button(key="try_go").click().run()
    job = read_jobs(Workspace(ws))[-1]
    assert job["argv"][:3] == ["predict", "--task", "topics"] and "--explain" in job["argv"]
    assert job["resources"] == {"slots": 0}  # never queued behind a training job
    assert wait(ws, [job["id"]], timeout=300)[job["id"]]["state"] == "done"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    request = tryit.latest_request(Workspace(ws))
    row = request["result"]["rows"][0]
    manifest = json.loads((ws / "ensemble.json").read_text())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Ensemble answer"] == row["answer"]
    assert metrics["Single adapter (baseline) answer"] == row["baseline"]["answer"]
    assert row["prompt"] in texts(at, "code")
    probs = at.dataframe[0].value
    assert dict(zip(probs["label"], probs["probability"], strict=True)) == row["probabilities"]
    assert probs["answer word"].tolist() == [" politics", " sports"]
    votes = at.dataframe[1].value
    groups = votes[votes["role"] == "group"]
    assert dict(zip(groups["adapter"], groups["weight"], strict=True)) == {
        a: manifest["weights"]["topics"].get(a, 0.0) for a in manifest["adapters"]
    }
    assert groups["answer"].tolist() == [v["answer"] for v in row["adapters"][: len(groups)]]
    # the page's answer is the terminal's
    doc = cli("predict", "--workspace", ws, "--task", "topics", TEXT, "--explain")
    assert doc["rows"][0]["probabilities"] == row["probabilities"]


def test_try_it_answers_uploaded_rows(real_ws, monkeypatch):
    ws = copy_workspace(real_ws, "tryit_upload")
    at = open_page(ws, "try_it", monkeypatch)
    at.selectbox(key="try_task").set_value("topics").run()
    at.radio(key="try_mode").set_value("Upload rows").run()
    bad = b'{"text": "A vote", "label": "weather"}\n'
    at.file_uploader[0].set_value(("rows.jsonl", bad, "application/json")).run()
    assert "rows.jsonl, row 1, field 'label'" in texts(at, "error")[0]
    assert at.button(key="try_go").disabled
    good = (
        b'{"text": "A vote in the senate", "label": "politics", "id": 7}\n{"text": "The match"}\n'
    )
    at.file_uploader[0].set_value(("rows.jsonl", good, "application/json")).run()
    assert "News: A vote in the senate\nTopic:" in texts(at, "code")
    at.button(key="try_go").click().run()
    job = read_jobs(Workspace(ws))[-1]
    assert wait(ws, [job["id"]], timeout=300)[job["id"]]["state"] == "done"
    at.run()
    doc = tryit.latest_request(Workspace(ws))["result"]
    assert [r["text"] for r in doc["rows"]] == ["A vote in the senate", "The match"]
    assert [r["label"] for r in doc["rows"]] == ["politics", None] and doc["labelled"] == 1
    shown = [m.value for m in at.metric if m.label == "Ensemble answer"]
    assert shown == [r["answer"] for r in doc["rows"]]
    assert f"Accuracy on the 1 labelled row(s): {doc['accuracy']:.3f}" in texts(at, "caption")


def test_try_it_says_when_there_is_nothing_to_try_or_the_job_failed(real_ws, monkeypatch):
    ws = copy_workspace(real_ws, "tryit_failed")
    folder = tryit.new_request(Workspace(ws), "topics", [{"text": TEXT}])
    from core.jobs import submit

    job = submit(ws, "predict", "predict", ["predict", "--bogus"], cwd=str(ROOT))
    wait(ws, [job], timeout=300)
    request = json.loads((folder / "request.json").read_text())
    (folder / "request.json").write_text(json.dumps({**request, "job": job}))
    at = open_page(ws, "try_it", monkeypatch)
    assert any("No answer: the job failed" in e for e in texts(at, "error"))
    (ws / "ensemble.json").unlink()
    at = open_page(ws, "try_it", monkeypatch)
    assert any("grouptune train" in i for i in texts(at, "info"))
