"""6 · Compare: the group ensemble against one QLoRA adapter and the zero-shot model, per task
and on average, with what each cost; and an export a stakeholder can open."""

from __future__ import annotations

import streamlit as st

from core.report.export import export_report
from core.report.figures import (
    METRIC_LABELS,
    MODEL_LABELS,
    MODELS,
    accuracy_flops_figure,
    comparison_figure,
)
from core.report.tables import (
    accuracy_flops_points,
    boosting_table,
    cost_table,
    headline,
    load_report,
    metric_table,
    weights_table,
)
from core.stages import command
from core.views.groups import mix_comparisons
from core.views.jobs import cli_text
from core.views.stages import boosting_todo, report_state
from core.views.workspaces import list_workspaces
from core.workspace import Workspace
from pages import _common

st.title(":material/leaderboard: Compare")
st.caption(
    "Test-set results of three models: the **group ensemble** (one adapter per group of related "
    "tasks, with its fitted weights and boosting rounds; below, how much of its gain is the "
    "groups' and how much the boosting's), the **single QLoRA adapter** trained on every task, "
    "and the **zero-shot** base model. Costs count everything each one needed, the ensemble's "
    "grouping work included."
)
ws, cfg = _common.require_config()
report = load_report(ws)
if report is None:
    evaluated = ws.path("eval").is_dir() and any(ws.path("eval").glob("*.json"))
    boost = [command("boost")] if boosting_todo(ws, cfg) else []  # rounds not made yet
    argvs = [command("report")] if evaluated else [*boost, command("evaluate"), command("report")]
    st.info("No comparison yet. It needs trained adapters (Training page), then:")
    _common.show_cli(argvs, ws)
    if st.button("Evaluate and report" if not evaluated else "Write the report", key="cmp_run"):
        _common.submit(ws, argvs, chain=True)
    _common.live_jobs(ws, stages=("boosting", "evaluation", "report"))
    st.stop()

head = headline(report)
mean = head["mean_accuracy"]
cols = st.columns(4)
for col, m in zip(cols, MODELS, strict=False):
    delta = head["ensemble_minus_baseline"] if m == "ensemble" else None
    value = f"{mean[m]:.3f}" if mean[m] is not None else "—"
    col.metric(MODEL_LABELS[m], value, f"{delta:+.3f} vs single" if delta is not None else None)
ratio, paper = head["training_flops_ratio"], head["training_flops_ratio_paper"]
cols[3].metric(
    "Training FLOPs vs single",
    f"{ratio:.2f}×" if ratio else "—",
    f"{paper:.2f}× the paper's way" if paper else None,
    delta_color="off",
    help="In full: every gradient feature, the prefix cache, the estimator, the group "
    "adapters, the weights' val passes and boosting, over the baseline's training. The paper's "
    "way: gradient features of the training rows + group and boosting adapters.",
)
if head["gain_text"]:
    st.markdown(
        f"**Ensemble − single adapter:** {head['gain_text']} (paired bootstrap over test rows "
        "and training seeds). " + head["gain_verdict"]
    )
if head["gain_parts_text"]:
    st.markdown(f"**Where it comes from:** {head['gain_parts_text']}.")
if report.get("missing"):
    st.warning("Not measured yet: " + "; ".join(report["missing"]))
if (state := report_state(ws))["state"] == "stale":
    why, cmd = state["detail"], cli_text(command("report"), ws)
    st.warning(f"This report is not current ({why}): `{cmd}`")

labels = METRIC_LABELS
metric = st.radio("Metric", list(labels), format_func=labels.get, horizontal=True, key="cmp_metric")
st.plotly_chart(comparison_figure(report, metric), key="cmp_chart")
table = metric_table(report, metric)
three = {c: st.column_config.NumberColumn(format="%.3f") for c in table.columns}
st.dataframe(table, key="cmp_table", column_config=three)

st.subheader("Cost")
st.caption(
    "FLOPs are counted on real batches; wall time and memory are as measured on this machine. "
    "Empty cells were not measured (the zero-shot model's inference is not timed)."
)
formats = {"training FLOPs": "compact", "inference FLOPs / example": "compact"}
formats.update({"training wall s": "%.1f", "inference wall s": "%.1f", "peak memory GiB": "%.2f"})
costs = {c: st.column_config.NumberColumn(format=f) for c, f in formats.items()}
st.dataframe(cost_table(report, metrics=False), key="cmp_costs", column_config=costs)

if report.get("by_weights"):
    st.subheader("Ensemble weights")
    st.caption(
        f"The report's ensemble uses **{report.get('weights_kind')}** weights. Own: each task "
        "runs its group's adapter (one forward); fitted: a mixture of adapters fitted on val, "
        "one forward per adapter it uses."
    )
    st.dataframe(
        weights_table(report),
        key="cmp_weights",
        column_config={"mean accuracy": st.column_config.NumberColumn(format="%.3f")},
    )
boosting = boosting_table(report)
if not boosting.empty:
    st.subheader("Boosting adapters")
    st.caption(
        "Adapters added after the groups, each fitted to the ensemble's residual on the group "
        "with the highest training error (method features: no training, from the stored "
        "gradients; train: trained) and added with weight `step`."
    )
    st.dataframe(boosting, key="cmp_boosting")

mixes = mix_comparisons(ws)
if mixes:
    st.subheader("Mixing weights: uniform against weighted")
    st.caption(
        "An adapter trained again with per-task mixing weights (Groups page, or `grouptune mix "
        "--train`), beside the uniform one, on the same test rows. The ensemble keeps the "
        "uniform adapters."
    )
    for i, mix in enumerate(mixes):
        what = "single adapter" if mix["label"] == "all" else f"group {mix['label']}"
        st.markdown(f"**{what}** (`{mix['adapter']}`): weighted − uniform {mix['gain_text']}")
        st.dataframe(mix["table"], hide_index=True, key=f"cmp_mix_{i}")

st.subheader("Accuracy against compute")
others = [Workspace(p) for p in list_workspaces() if Workspace(p).root != ws.root]
points = accuracy_flops_points(ws, others)
st.plotly_chart(accuracy_flops_figure(points), key="cmp_flops")
if points["model"].eq("ensemble").sum() < 2:
    st.caption(
        "Only one m has been trained, so each model is one point. To draw the curve, train other "
        "m in copies of this experiment (same model and data, `grouping.m` set): experiments "
        "whose zero-shot evaluation saw the same examples are added here."
    )

st.subheader("Export")
st.caption(
    "One HTML file with every chart and table (opens offline) and the tables as CSV. Terminal: "
    f"`grouptune export --workspace {ws.root}`"
)
if st.button("Export the report", icon=":material/download:", key="cmp_export"):
    paths = export_report(ws)
    st.session_state[f"cmp_exported:{ws.root}"] = {"html": paths["html"], "zip": paths["zip"]}
files = st.session_state.get(f"cmp_exported:{ws.root}")
if files:
    c1, c2 = st.columns(2)
    with open(files["html"], "rb") as fh:
        c1.download_button("report.html", fh.read(), "report.html", "text/html", key="cmp_html")
    with open(files["zip"], "rb") as fh:
        c2.download_button("CSV + HTML (zip)", fh.read(), "grouptune.zip", key="cmp_zip")
    st.caption(f"Also saved in `{ws.path('exports')}`.")
