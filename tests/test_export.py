"""core.report.export: the figures plot the workspace's numbers, the comparison tables are report.json,
and the export is a self-contained HTML file plus CSVs."""

from __future__ import annotations

import io
import json
import re
import zipfile

import pandas as pd
import pytest
from dashboard import copy_workspace, decode

from core.report.export import export_report
from core.report.figures import (
    MODEL_COLORS,
    MODEL_LABELS,
    MODELS,
    accuracy_flops_figure,
    comparison_figure,
    heatmap_figure,
    label_balance_figure,
    loss_figure,
    sweep_figure,
    val_figure,
    word_length_figure,
)
from core.report.frames import affinity_view
from core.report.tables import (
    COST_COLUMNS,
    WEIGHT_LABELS,
    accuracy_flops_points,
    boosting_table,
    comparable,
    cost_table,
    gain_text,
    gain_verdict,
    headline,
    metric_table,
    weights_table,
)
from core.views.datasets import label_balance, load_one_task, word_lengths
from core.views.groups import sweep_entries
from core.views.training import read_training_metrics
from core.workspace import Workspace


@pytest.fixture(scope="module")
def report(real_ws):
    return json.loads((real_ws / "report.json").read_text())


def spec(fig) -> dict:
    return decode(json.loads(fig.to_json()))


def test_metric_tables_are_report_json(report):
    for metric in ("accuracy", "f1", "ece"):
        table = metric_table(report, metric)
        assert table.index.tolist() == [*report["tasks"], "mean"]
        for model in MODELS:
            column = table[MODEL_LABELS[model]]
            assert column.tolist() == [report[metric][model][t] for t in table.index]


def test_comparison_figure_bars_and_colours(report):
    data = spec(comparison_figure(report, "accuracy"))["data"]
    assert [tr["name"] for tr in data] == [MODEL_LABELS[m] for m in MODELS]
    for tr, model in zip(data, MODELS, strict=True):
        assert tr["marker"]["color"] == MODEL_COLORS[model]
        assert tr["y"] == [report["accuracy"][model][t] for t in [*report["tasks"], "mean"]]


def test_a_model_not_evaluated_is_left_out(report):
    partial = {**report, "accuracy": {**report["accuracy"], "baseline": None}}
    names = [tr["name"] for tr in spec(comparison_figure(partial))["data"]]
    assert MODEL_LABELS["baseline"] not in names
    assert headline(partial)["ensemble_minus_baseline"] is None


def test_cost_table_sums_the_right_stages(report):
    costs = cost_table(report)
    ens, base = (
        costs.loc[MODEL_LABELS["ensemble"]],
        costs.loc[MODEL_LABELS["baseline"]],
    )
    f, w = report["flops"], report["wall_seconds"]
    assert ens["training FLOPs"] == f["gradients"] + f["estimation"] + f["group_training"]
    assert base["training FLOPs"] == f["baseline_training"]
    assert ens["inference FLOPs / example"] == f["ensemble_inference_per_example"]
    assert ens["training wall s"] == pytest.approx(
        w["gradients"] + w["estimation"] + w["group_training"]
    )
    assert base["inference wall s"] == w["baseline_inference"]
    assert ens["Accuracy"] == report["accuracy"]["ensemble"]["mean"]
    assert cost_table(report, metrics=False).columns.tolist() == COST_COLUMNS
    zero = costs.loc[MODEL_LABELS["zero_shot"]]
    assert zero["training FLOPs"] == 0 and pd.isna(zero["inference FLOPs / example"])
    head = headline(report)
    assert head["ensemble_minus_baseline"] == pytest.approx(
        report["accuracy"]["ensemble"]["mean"] - report["accuracy"]["baseline"]["mean"]
    )
    assert head["training_flops_ratio"] == report["flops_ratio"]["training_full"]
    assert head["training_flops_ratio_paper"] == report["flops_ratio"]["training_paper"]


def test_gain_in_words():
    gain = {"points": 1.3, "ci": [-0.84, 3.44], "level": 0.95, "seeds": 1, "rows": 600}
    assert gain_text(gain) == "+1.3 points [-0.8, +3.4], 1 seed, 600 paired test rows"
    assert "includes 0" in gain_verdict(gain)
    five = {**gain, "ci": [0.2, 2.5], "seeds": 5, "rows": 150}
    assert gain_text(five) == "+1.3 points [+0.2, +2.5], 5 seeds, 150 paired test rows each"
    assert "above 0: the ensemble is better" in gain_verdict(five)
    assert "below 0" in gain_verdict({**gain, "points": -2.0, "ci": [-3.0, -0.5]})
    assert gain_text(None) is None and headline({})["gain_text"] is None
    head = headline({"gain": five})
    assert (head["gain_text"], head["gain_verdict"]) == (
        gain_text(five),
        gain_verdict(five),
    )


def test_weights_and_boosting_tables(report):
    forwards = {"own": 1.0, "fit": 2.5, "ensemble": 3.5, "baseline": 1}
    report = {
        **report,
        "by_weights": {"own": 0.6, "fit": 0.7},
        "inference_forwards_per_example": forwards,
    }
    table = weights_table(report)
    for kind, value in report["by_weights"].items():
        row = table.loc[WEIGHT_LABELS[kind]]
        assert row["mean accuracy"] == value and row["forwards / example"] == forwards[kind]
    single = table.loc[MODEL_LABELS["baseline"]]
    assert single["mean accuracy"] == report["accuracy"]["baseline"]["mean"]
    assert single["forwards / example"] == 1
    rounds = [
        {"name": "boost-0", "adapter": "adapters/boost-0", "tasks": ["a", "b"], "group": 0,
         "step": 0.4, "method": "features", "train_error_before": 0.31,
         "train_error_after": 0.27},
    ]  # fmt: skip
    boosted = {**report, "boosting": rounds}
    rows = boosting_table(boosted)
    assert rows.loc["boost-0"].tolist() == ["a, b", 0, "features", 0.4, 0.31, 0.27]
    with_boost = weights_table(boosted).loc["Ensemble with boosting"]
    assert with_boost["mean accuracy"] == report["accuracy"]["ensemble"]["mean"]
    assert with_boost["forwards / example"] == 3.5
    assert boosting_table({}).empty


def test_accuracy_against_flops_across_workspaces(real_ws, report):
    other = copy_workspace(real_ws, "export_m3")
    changed = json.loads((other / "report.json").read_text())
    changed["groups"] = [[t] for t in changed["tasks"]]
    changed["accuracy"]["ensemble"]["mean"] = 0.75
    changed["flops"]["group_training"] *= 2
    (other / "report.json").write_text(json.dumps(changed))
    unrelated = copy_workspace(real_ws, "export_other_data")  # e.g. other test rows
    (unrelated / "report.json").write_text(json.dumps(changed))
    zero = json.loads((unrelated / "eval" / "zero_shot.json").read_text())
    zero["fingerprint"]["tasks"]["topics"] = "another test split"
    (unrelated / "eval" / "zero_shot.json").write_text(json.dumps(zero))
    assert comparable(Workspace(real_ws), Workspace(other))
    assert not comparable(Workspace(real_ws), Workspace(unrelated))
    points = accuracy_flops_points(Workspace(real_ws), [Workspace(other), Workspace(unrelated)])
    ens = points[points["model"] == "ensemble"].set_index("m")
    assert sorted(ens.index) == [2, 3]
    assert ens.loc[3, "mean accuracy"] == 0.75
    assert ens.loc[2, "mean accuracy"] == report["accuracy"]["ensemble"]["mean"]
    fig = spec(accuracy_flops_figure(points))
    line = next(tr for tr in fig["data"] if tr["name"] == MODEL_LABELS["ensemble"])
    assert line["text"] == ["m=2", "m=3"] and line["y"] == [ens.loc[2, "mean accuracy"], 0.75]
    zero = report["accuracy"]["zero_shot"]["mean"]
    assert fig["layout"]["shapes"][0]["y0"] == zero  # the zero-shot reference line


def test_heatmap_and_sweep_figures(real_ws):
    ws = Workspace(real_ws)
    view = affinity_view(ws)
    heat = spec(heatmap_figure(view))
    assert heat["data"][0]["z"] == view["T"].to_numpy().tolist()
    assert heat["data"][0]["x"] == view["order"]
    assert len(heat["layout"]["shapes"]) == len(view["groups"])  # one outline per group
    entries = sweep_entries(ws)
    chosen = ws.read("groupings", "chosen.json")
    sweep = spec(sweep_figure(entries, chosen))["data"]
    by_name = {tr["name"]: tr for tr in sweep}
    for method in ("sdp", "spectral"):
        mine = [e for e in entries if e["method"] == method]
        assert by_name[method]["x"] == [e["m"] for e in mine]
        assert by_name[method]["y"] == [e["mean_accuracy"] for e in mine]
    assert by_name["chosen (sdp)"]["y"] == [chosen["mean_accuracy"]]


def test_dataset_and_training_figures(real_ws):
    ws = Workspace(real_ws)
    steps, val = read_training_metrics(ws, "group-0")
    loss = spec(loss_figure(steps, "group-0"))["data"][0]
    assert loss["y"] == steps["loss"].tolist()
    curves = {tr["name"]: tr for tr in spec(val_figure(val, "group-0"))["data"]}
    assert set(curves) == {"reviews_a", "reviews_b", "mean"}
    yelp = load_one_task("yelp", None, {})
    balance = label_balance(yelp)
    bars = {tr["name"]: tr["y"] for tr in spec(label_balance_figure(balance, "yelp"))["data"]}
    assert bars["train"] == balance[balance["split"] == "train"]["rows"].tolist()
    lengths = word_lengths(yelp)
    hist = {tr["name"]: tr["x"] for tr in spec(word_length_figure(lengths, "yelp"))["data"]}
    assert hist["test"] == lengths[lengths["split"] == "test"]["words"].tolist()


def test_export_report_writes_html_and_csvs(real_ws, report):
    ws_dir = copy_workspace(real_ws, "export_files")
    paths = export_report(Workspace(ws_dir))
    page = paths["html"].read_text()
    assert paths["html"] == ws_dir / "exports" / "report.html"
    assert not re.search(r"<script[^>]*\ssrc=", page)  # nothing to fetch: opens offline
    assert page.count("Plotly.newPlot") >= 4 and len(page) > 1_000_000  # plotly.js inline
    assert f"{report['accuracy']['ensemble']['mean']:.3f}" in page
    accuracy = pd.read_csv(paths["csv"]["accuracy"], index_col="task")
    assert accuracy.loc["mean", MODEL_LABELS["ensemble"]] == pytest.approx(
        report["accuracy"]["ensemble"]["mean"]
    )
    tables = {"accuracy", "f1", "ece", "costs", "groups", "affinity", "gain", "weights"}
    assert set(paths["csv"]) == tables | ({"boosting"} if report["boosting"] else set())
    assert gain_text(report["gain"]) in page
    gain = pd.read_csv(paths["csv"]["gain"], index_col="task")
    assert gain["points"].to_dict() == pytest.approx(
        {t: v["points"] for t, v in report["gain"]["per_task"].items()}
    )
    with zipfile.ZipFile(paths["zip"]) as zf:
        assert sorted(zf.namelist()) == sorted(["report.html", *(f"{n}.csv" for n in paths["csv"])])
        inner = pd.read_csv(io.BytesIO(zf.read("accuracy.csv")), index_col="task")
    pd.testing.assert_frame_equal(inner, accuracy)
    assert not list((ws_dir / "exports").glob(".*tmp"))  # atomic writes leave no temp files


def test_export_of_a_workspace_without_results(tmp_path):
    from dashboard import cli, write_experiment

    config = write_experiment(tmp_path)
    cli("init", "--config", config, "--workspace", tmp_path / "ws")
    paths = export_report(Workspace(tmp_path / "ws"))
    assert "GroupTune report" in paths["html"].read_text()
    assert set(paths["csv"]) == {"accuracy", "f1", "ece", "costs"}
