"""Plotly figures of workspace data, shared by the dashboard's pages and the stakeholder export: label balance, prompt lengths, the affinity heatmap, the sweep over m, training curves, the comparison and accuracy against FLOPs."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from core.report.tables import METRIC_LABELS, MODEL_LABELS, MODELS, metric_table

MODEL_COLORS = {"ensemble": "#3A6EA5", "baseline": "#E8833A", "zero_shot": "#9AA0A6"}


SPLIT_COLORS = {"train": "#3A6EA5", "val": "#E8833A", "test": "#9AA0A6"}


LAYOUT = dict(template="plotly_white", margin=dict(l=10, r=10, t=50, b=10), height=380)


def label_balance_figure(balance: pd.DataFrame, task: str) -> go.Figure:
    """Rows per label, one bar group per split (from core.views.datasets.label_balance)."""
    fig = go.Figure()
    for split, part in balance.groupby("split", sort=False):
        fig.add_bar(x=part["label"], y=part["rows"], name=split, marker_color=SPLIT_COLORS[split])
    fig.update_layout(title=f"Label balance: {task}", barmode="group", **LAYOUT)
    return fig.update_yaxes(title="rows")


def word_length_figure(lengths: pd.DataFrame, task: str) -> go.Figure:
    """Histogram of words per rendered prompt (from core.views.datasets.word_lengths)."""
    fig = go.Figure()
    for split, part in lengths.groupby("split", sort=False):
        fig.add_histogram(
            x=part["words"], name=split, marker_color=SPLIT_COLORS[split], opacity=0.75
        )
    fig.update_layout(title=f"Prompt length in words: {task}", barmode="overlay", **LAYOUT)
    return fig.update_xaxes(title="words per prompt").update_yaxes(title="examples")


def heatmap_figure(view: dict) -> go.Figure:
    """The affinity matrix in clustered order (core.report.frames.affinity_view), diverging colours
    centred on 0; hover shows the pair, its value and how many subsets held both tasks."""
    T, counts, order = view["T"], view["counts"], view["order"]
    fig = go.Figure(
        go.Heatmap(
            z=T.to_numpy(),
            x=order,
            y=order,
            customdata=counts.to_numpy(),
            colorscale="RdBu",
            zmid=0,
            colorbar=dict(title="affinity"),
            hovertemplate="%{y} with %{x}<br>affinity %{z:.3f}"
            "<br>subsets holding both: %{customdata}<extra></extra>",
        )
    )
    n = len(order)
    for group in view.get("groups") or []:  # outline each chosen group on the diagonal
        idx = [order.index(t) for t in group if t in order]
        if idx:
            lo, hi = min(idx) - 0.5, max(idx) + 0.5
            fig.add_shape(type="rect", x0=lo, x1=hi, y0=lo, y1=hi, line=dict(width=2))
    fig.update_layout(title="Task affinity (positive: training together helps)", **LAYOUT)
    fig.update_layout(height=max(380, 40 * n + 150))
    return fig.update_yaxes(autorange="reversed")


def sweep_figure(entries: list[dict], chosen: dict | None = None) -> go.Figure:
    """Predicted mean accuracy against the number of groups m, one line per method."""
    fig = go.Figure()
    colors = {"sdp": "#3A6EA5", "spectral": "#E8833A"}
    for method in dict.fromkeys(e["method"] for e in entries):
        part = [e for e in entries if e["method"] == method]
        fig.add_scatter(
            x=[e["m"] for e in part],
            y=[e["mean_accuracy"] for e in part],
            mode="lines+markers",
            name=method,
            line=dict(color=colors.get(method)),
            customdata=[" | ".join(", ".join(g) for g in e["groups"]) for e in part],
            hovertemplate="m=%{x}: %{y:.3f}<br>%{customdata}<extra>" + method + "</extra>",
        )
    if chosen:
        fig.add_scatter(
            x=[chosen["m"]],
            y=[chosen["mean_accuracy"]],
            mode="markers",
            name=f"chosen ({chosen['method']})",
            marker=dict(symbol="star", size=16, color="#2E7D32"),
        )
    fig.update_layout(title="Predicted mean accuracy by number of groups", **LAYOUT)
    return fig.update_xaxes(title="m (groups = adapters)", dtick=1).update_yaxes(
        title="predicted mean accuracy"
    )


def loss_figure(steps: pd.DataFrame, name: str) -> go.Figure:
    """Training loss per optimizer step (core.views.training.read_training_metrics)."""
    fig = go.Figure()
    fig.add_scatter(
        x=steps["step"],
        y=steps["loss"],
        mode="lines+markers",
        name="loss",
        customdata=steps["task"],
        hovertemplate="step %{x}: %{y:.4f}<br>batch of %{customdata}<extra></extra>",
        line=dict(color="#3A6EA5"),
        marker=dict(size=4),
    )
    fig.update_layout(title=f"Training loss: {name}", showlegend=False, **LAYOUT)
    return fig.update_xaxes(title="step").update_yaxes(title="cross-entropy")


def val_figure(val: pd.DataFrame, name: str) -> go.Figure:
    """Validation accuracy per task after each epoch (the mean dashed)."""
    fig = go.Figure()
    for task, part in val.groupby("task", sort=False):
        fig.add_scatter(
            x=part["epoch"],
            y=part["accuracy"],
            mode="lines+markers",
            name=task,
            line=dict(dash="dash", color="#333333") if task == "mean" else None,
        )
    fig.update_layout(title=f"Validation accuracy per task: {name}", **LAYOUT)
    return fig.update_xaxes(title="epoch", dtick=1).update_yaxes(title="accuracy")


def comparison_figure(report: dict, metric: str = "accuracy") -> go.Figure:
    """Grouped bars: per task and mean, one bar per model in its fixed colour."""
    table = metric_table(report, metric)
    fig = go.Figure()
    for m in MODELS:
        col = table[MODEL_LABELS[m]]
        if col.notna().any():
            fig.add_bar(
                x=list(table.index),
                y=col.tolist(),
                name=MODEL_LABELS[m],
                marker_color=MODEL_COLORS[m],
                hovertemplate="%{x}: %{y:.3f}<extra>" + MODEL_LABELS[m] + "</extra>",
            )
    better = "lower is better" if metric == "ece" else "higher is better"
    fig.update_layout(title=f"{METRIC_LABELS[metric]} per task ({better})", barmode="group")
    return fig.update_layout(**LAYOUT).update_yaxes(title=METRIC_LABELS[metric])


def accuracy_flops_figure(points: pd.DataFrame) -> go.Figure:
    """Mean accuracy vs training FLOPs; the zero-shot model as a dashed reference line."""
    fig = go.Figure()
    for m in ("ensemble", "baseline"):
        part = points[(points["model"] == m) & points["training FLOPs"].notna()]
        if part.empty:
            continue
        part = part.sort_values("training FLOPs")
        fig.add_scatter(
            x=part["training FLOPs"],
            y=part["mean accuracy"],
            mode="markers+text+lines" if len(part) > 1 else "markers+text",
            text=[f"m={k}" for k in part["m"]],
            textposition="top center",
            name=MODEL_LABELS[m],
            marker=dict(size=14, color=MODEL_COLORS[m]),
            line=dict(color=MODEL_COLORS[m]),
            customdata=part["workspace"],
            hovertemplate="%{customdata}, %{text}<br>%{x:.3g} FLOPs<br>accuracy %{y:.3f}"
            "<extra></extra>",
        )
    zero = points[points["model"] == "zero_shot"]
    if not zero.empty:
        fig.add_hline(
            y=float(zero["mean accuracy"].iloc[0]),
            line=dict(dash="dash", color=MODEL_COLORS["zero_shot"]),
            annotation_text="zero-shot",
        )
    fig.update_layout(title="Mean accuracy against training compute", **LAYOUT)
    return fig.update_xaxes(title="training FLOPs").update_yaxes(title="mean test accuracy")
