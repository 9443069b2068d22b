"""core.report.report: the gain, its interval and the ensemble's variants as read from a workspace the
real engine made (tests/test_app.py), and what an older workspace without per-row results gets."""

from __future__ import annotations

import json

import pytest
from dashboard import copy_workspace

from core.errors import GroupTuneError
from core.report.report import HINTS, build_report, seeds_gain
from core.stats import paired_gain, paired_sample
from core.workspace import Workspace


def read(ws, *parts) -> dict:
    return json.loads(ws.joinpath(*parts).read_text())


def edit(ws, path: str, change) -> None:
    doc = read(ws, path)
    change(doc)
    (ws / path).write_text(json.dumps(doc))


def test_gain_is_the_paired_bootstrap_of_the_evaluated_rows(real_ws):
    report = read(real_ws, "report.json")
    ens, base = read(real_ws, "eval", "ensemble.json"), read(real_ws, "eval", "baseline.json")
    gain = report["gain"]
    assert gain == paired_gain([paired_sample(ens["correct"], base["correct"])])
    # the rows are the ones the accuracies were computed on: the gain is their difference
    mean = report["accuracy"]
    assert gain["points"] == pytest.approx(
        100 * (mean["ensemble"]["mean"] - mean["baseline"]["mean"])
    )
    assert gain["rows"] == sum(m["n"] for t, m in base["metrics"].items() if t != "mean")
    assert gain["seeds"] == 1 and gain["ci"][0] <= gain["points"] <= gain["ci"][1]
    assert set(gain["per_task"]) == set(report["tasks"])


def test_the_gain_is_split_into_the_groups_share_and_boostings(real_ws):
    """gain_parts: the group adapters alone (the ensemble's weights, no boosting) against the
    baseline on the same rows, and what boosting adds; shown on Home, Compare and the export."""
    from core.report.tables import headline

    report = read(real_ws, "report.json")
    ens, base = read(real_ws, "eval", "ensemble.json"), read(real_ws, "eval", "baseline.json")
    parts, kind = report["gain_parts"], ens["weights_kind"]
    groups = paired_gain([paired_sample(ens["by_weights_correct"][kind], base["correct"])])
    assert parts["groups"]["points"] == groups["points"] and parts["groups"]["ci"] == groups["ci"]
    assert parts["groups"]["points"] == pytest.approx(
        100 * (report["by_weights"][kind] - report["accuracy"]["baseline"]["mean"])
    )
    assert parts["boosting_points"] == pytest.approx(report["gain"]["points"] - groups["points"])
    assert parts["boosting_rounds"] == len(ens["boosting"])
    text = headline(report)["gain_parts_text"]
    assert (
        f"{groups['points']:+.1f} points" in text and f"add {parts['boosting_points']:+.1f}" in text
    )


def test_weights_forwards_and_boosting_come_from_the_files(real_ws):
    report = read(real_ws, "report.json")
    ens, manifest = read(real_ws, "eval", "ensemble.json"), read(real_ws, "ensemble.json")
    assert report["weights_kind"] == manifest["weights_kind"]
    assert report["by_weights"] == {k: m["mean"]["accuracy"] for k, m in ens["by_weights"].items()}
    assert {"own", report["weights_kind"]} <= set(report["by_weights"])
    assert report["inference_forwards_per_example"] == {
        **ens["forwards_per_example"],
        "baseline": 1,
    }
    assert report["boosting"] == manifest.get("boosting", [])


def test_an_older_workspace_reports_the_rest_and_names_the_step(real_ws):
    ws = copy_workspace(real_ws, "report_old")
    new_keys = ("correct", "by_weights", "by_weights_correct", "forwards_per_example", "boosting")

    def older(doc):
        for key in new_keys:
            doc.pop(key, None)

    for name in ("ensemble", "baseline"):
        edit(ws, f"eval/{name}.json", older)
    edit(ws, "ensemble.json", lambda d: d.pop("boosting", None))
    report = build_report(Workspace(ws))
    assert report["gain"] is None and HINTS["gain"] in report["missing"]
    assert "grouptune evaluate" in HINTS["gain"]
    assert report["by_weights"] is None and report["inference_forwards_per_example"] is None
    assert report["boosting"] == []
    assert report["accuracy"] == read(real_ws, "report.json")["accuracy"]


def test_a_mismatched_evaluation_is_named_not_fatal(real_ws):
    ws = copy_workspace(real_ws, "report_mismatch")
    edit(ws, "eval/baseline.json", lambda d: d["correct"].pop("topics"))
    report = build_report(Workspace(ws))
    assert report["gain"] is None and report["accuracy"]["baseline"] is not None
    assert any("ensemble was scored on tasks" in m for m in report["missing"])


def test_boosting_entries_are_those_evaluated_else_the_manifests(real_ws):
    ws = copy_workspace(real_ws, "report_boost")
    rounds = [
        {
            "name": "boost-0",
            "adapter": "adapters/boost-0",
            "tasks": ["topics"],
            "group": 1,
            "step": 0.2,
            "method": "features",
            "train_error_before": 0.31,
            "train_error_after": 0.27,
        },
    ]
    edit(ws, "eval/ensemble.json", lambda d: d.update(boosting=rounds))
    assert build_report(Workspace(ws))["boosting"] == rounds  # what the evaluation used
    edit(ws, "eval/ensemble.json", lambda d: d.pop("boosting"))
    edit(ws, "ensemble.json", lambda d: d.update(boosting=rounds[:0]))
    assert build_report(Workspace(ws))["boosting"] == []
    edit(ws, "ensemble.json", lambda d: d.update(boosting=rounds))
    assert build_report(Workspace(ws))["boosting"] == rounds  # made, not evaluated yet


def test_several_seeds_give_the_same_gain_format(real_ws):
    a = copy_workspace(real_ws, "report_seed_a")
    b = copy_workspace(real_ws, "report_seed_b")

    def flip(doc):  # another seed: the ensemble now errs where it was right on one task
        doc["correct"]["topics"] = [1 - v for v in doc["correct"]["topics"]]

    edit(b, "eval/ensemble.json", flip)
    samples = []
    for ws in (a, b):
        ens, base = read(ws, "eval", "ensemble.json"), read(ws, "eval", "baseline.json")
        samples.append(paired_sample(ens["correct"], base["correct"]))
    gain = seeds_gain([Workspace(a), Workspace(b)])
    assert gain == paired_gain(samples) and gain["seeds"] == 2
    assert set(gain) == set(read(real_ws, "report.json")["gain"])
    edit(b, "eval/baseline.json", lambda d: d.pop("correct"))
    with pytest.raises(GroupTuneError, match=f"{b}: gain interval"):
        seeds_gain([Workspace(a), Workspace(b)])
