"""Figures and exports: every chart the dashboard shows, and the report a stakeholder opens.

Each `*_figure` builds a plotly figure from workspace data (tables from core.status or
report.json), so the numbers a chart plots can be checked against the files. The comparison
tables read report.json (written by `grouptune report`); nothing is guessed: a cost or metric
that was not measured is None and shown as "—".

`export_report(ws)` writes, atomically, under <ws>/exports/:
  report.html   self-contained (plotly's JavaScript inline: opens offline, no server)
  <table>.csv   accuracy, f1, ece (task x model), costs, groups, affinity, and when the
                report has them gain (per task), weights (own vs fit), boosting
  grouptune-<name>.zip   the CSVs and the HTML together
and returns {"html": path, "zip": path, "csv": {table: path}}.
"""

from __future__ import annotations

import html
import io
import time
import zipfile

import pandas as pd
import plotly.graph_objects as go

from core.status import write_bytes
from core.workspace import Workspace

MODELS = ("ensemble", "baseline", "zero_shot")
MODEL_LABELS = {
    "ensemble": "Group ensemble",
    "baseline": "Single QLoRA adapter",
    "zero_shot": "Zero-shot base model",
}
MODEL_COLORS = {"ensemble": "#3A6EA5", "baseline": "#E8833A", "zero_shot": "#9AA0A6"}
METRIC_LABELS = {"accuracy": "Accuracy", "f1": "Macro F1", "ece": "Calibration error (ECE)"}
SPLIT_COLORS = {"train": "#3A6EA5", "val": "#E8833A", "test": "#9AA0A6"}
LAYOUT = dict(template="plotly_white", margin=dict(l=10, r=10, t=50, b=10), height=380)


# --- pages 1-5 ------------------------------------------------------------------------------------
def label_balance_figure(balance: pd.DataFrame, task: str) -> go.Figure:
    """Rows per label, one bar group per split (from core.status.label_balance)."""
    fig = go.Figure()
    for split, part in balance.groupby("split", sort=False):
        fig.add_bar(x=part["label"], y=part["rows"], name=split, marker_color=SPLIT_COLORS[split])
    fig.update_layout(title=f"Label balance: {task}", barmode="group", **LAYOUT)
    return fig.update_yaxes(title="rows")


def word_length_figure(lengths: pd.DataFrame, task: str) -> go.Figure:
    """Histogram of words per rendered prompt (from core.status.word_lengths)."""
    fig = go.Figure()
    for split, part in lengths.groupby("split", sort=False):
        fig.add_histogram(
            x=part["words"], name=split, marker_color=SPLIT_COLORS[split], opacity=0.75
        )
    fig.update_layout(title=f"Prompt length in words: {task}", barmode="overlay", **LAYOUT)
    return fig.update_xaxes(title="words per prompt").update_yaxes(title="examples")


def heatmap_figure(view: dict) -> go.Figure:
    """The affinity matrix in clustered order (core.status.affinity_view), diverging colours
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
    """Training loss per optimizer step (core.status.read_training_metrics)."""
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


# --- page 6: the comparison -----------------------------------------------------------------------
def load_report(ws: Workspace) -> dict | None:
    return ws.read("report.json")


def metric_table(report: dict, metric: str = "accuracy") -> pd.DataFrame:
    """Task x model table of one metric (rows: tasks, then "mean"); None where not evaluated."""
    tasks = [*report.get("tasks", []), "mean"]
    values = report.get(metric) or {}
    data = {MODEL_LABELS[m]: [(values.get(m) or {}).get(t) for t in tasks] for m in MODELS}
    return pd.DataFrame(data, index=pd.Index(tasks, name="task"))


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


def _sum(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else float(sum(values))


def _max(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(max(values)) if values else None


COST_COLUMNS = [
    "training FLOPs",
    "inference FLOPs / example",
    "training wall s",
    "inference wall s",
    "peak memory GiB",
]


def cost_table(report: dict, metrics: bool = True) -> pd.DataFrame:
    """Per model: mean accuracy/F1/ECE (unless `metrics` is False), training FLOPs (the
    ensemble's include gradient features and estimation), inference FLOPs per example, wall
    times, peak memory."""
    flops, wall = report.get("flops") or {}, report.get("wall_seconds") or {}
    mem = report.get("peak_memory_bytes") or {}
    ens_train = ("gradients", "estimation", "group_training")
    stages = {
        "ensemble": (ens_train, "ensemble_inference"),
        "baseline": (("baseline_training",), "baseline_inference"),
    }
    rows = []
    for m in MODELS:
        mean = {k: ((report.get(k) or {}).get(m) or {}).get("mean") for k in METRIC_LABELS}
        row = {"model": MODEL_LABELS[m], **{METRIC_LABELS[k]: v for k, v in mean.items()}}
        if m in stages:
            train, infer = stages[m]
            gib = _max(mem.get(s) for s in (*train, infer))
            row.update(
                {
                    "training FLOPs": _sum(flops.get(s) for s in train),
                    "inference FLOPs / example": flops.get(f"{infer}_per_example"),
                    "training wall s": _sum(wall.get(s) for s in train),
                    "inference wall s": wall.get(infer),
                    "peak memory GiB": gib / 2**30 if gib is not None else None,
                }
            )
        else:  # the base model is not trained; its inference cost is not measured
            row.update({"training FLOPs": 0.0, "training wall s": 0.0})
        rows.append(row)
    table = pd.DataFrame(rows).set_index("model")
    table = table.reindex(columns=[*METRIC_LABELS.values(), *COST_COLUMNS])
    return table if metrics else table[COST_COLUMNS]


def gain_text(gain: dict | None) -> str | None:
    """report.json's "gain" in words: "+1.3 points [-0.8, +3.4], 1 seed, 600 paired test rows"."""
    if not gain:
        return None
    low, high = gain["ci"]
    seeds = "1 seed" if gain["seeds"] == 1 else f"{gain['seeds']} seeds"
    each = "" if gain["seeds"] == 1 else " each"
    return (
        f"{gain['points']:+.1f} points [{low:+.1f}, {high:+.1f}], {seeds}, "
        f"{gain['rows']} paired test rows{each}"
    )


def gain_verdict(gain: dict | None) -> str | None:
    """Whether the interval tells the gain from noise."""
    if not gain:
        return None
    low, high = gain["ci"]
    level = f"{100 * gain.get('level', 0.95):.0f}%"
    if low > 0:
        return f"The {level} interval is above 0: the ensemble is better beyond this noise."
    if high < 0:
        return f"The {level} interval is below 0: the single adapter is better beyond this noise."
    return f"The {level} interval includes 0: this difference cannot be told from noise."


def headline(report: dict) -> dict:
    """The numbers a stakeholder asks first: mean accuracies, their difference (with its
    interval when per-row results were evaluated), cost ratios."""
    acc = report.get("accuracy") or {}
    mean = {m: (acc.get(m) or {}).get("mean") for m in MODELS}
    delta = None
    if mean["ensemble"] is not None and mean["baseline"] is not None:
        delta = mean["ensemble"] - mean["baseline"]
    ratio = report.get("flops_ratio") or {}
    gain = report.get("gain")
    return {
        "mean_accuracy": mean,
        "ensemble_minus_baseline": delta,
        "gain": gain,
        "gain_text": gain_text(gain),
        "gain_verdict": gain_verdict(gain),
        "training_flops_ratio": ratio.get("training_full"),
        "training_flops_ratio_paper": ratio.get("training_paper"),
        "inference_flops_ratio": ratio.get("inference"),
        "groups": report.get("groups"),
    }


WEIGHT_LABELS = {"own": "Ensemble, own weights", "fit": "Ensemble, fitted weights"}


def weights_table(report: dict) -> pd.DataFrame:
    """Mean accuracy and adapter forwards per example of the ensemble under each weights kind
    ("own": each task's group adapter; "fit": fitted mixtures), beside the single adapter."""
    by = report.get("by_weights") or {}
    forwards = report.get("inference_forwards_per_example") or {}
    baseline = ((report.get("accuracy") or {}).get("baseline") or {}).get("mean")
    rows = [
        {
            "model": label,
            "mean accuracy": by.get(kind),
            "forwards / example": forwards.get(kind),
        }
        for kind, label in WEIGHT_LABELS.items()
        if kind in by or kind in forwards
    ]
    if report.get("boosting"):  # the report's ensemble is then the weights plus the rounds
        ensemble = ((report.get("accuracy") or {}).get("ensemble") or {}).get("mean")
        rows.append(
            {
                "model": "Ensemble with boosting",
                "mean accuracy": ensemble,
                "forwards / example": forwards.get("ensemble"),
            }
        )
    rows.append(
        {
            "model": MODEL_LABELS["baseline"],
            "mean accuracy": baseline,
            "forwards / example": forwards.get("baseline", 1),
        }
    )
    return pd.DataFrame(rows).set_index("model")


def boosting_table(report: dict) -> pd.DataFrame:
    """One row per boosting adapter (ensemble.json "boosting"); empty when there are none."""
    rows = [
        {
            "adapter": b["name"],
            "tasks": ", ".join(b.get("tasks") or []),
            "group": b.get("group"),
            "method": b.get("method"),
            "step": b.get("step"),
            "train error before": b.get("train_error_before"),
            "train error after": b.get("train_error_after"),
        }
        for b in report.get("boosting") or []
    ]
    columns = ["adapter", "tasks", "group", "method", "step"]
    columns += ["train error before", "train error after"]
    return pd.DataFrame(rows, columns=columns).set_index("adapter")


def gain_table(report: dict) -> pd.DataFrame:
    """Per task: the gain in points over the baseline and its wins/losses/ties over seeds."""
    per_task = (report.get("gain") or {}).get("per_task") or {}
    columns = ["points", "wins", "losses", "ties"]
    frame = pd.DataFrame.from_dict(per_task, orient="index", columns=columns)
    return frame.rename_axis("task")


def comparable(a: Workspace, b: Workspace) -> bool:
    """Same base model and the same task data (test splits included), as recorded by the
    zero-shot evaluation: their accuracies are measured on the same examples."""
    fa = (a.read("eval", "zero_shot.json") or {}).get("fingerprint")
    fb = (b.read("eval", "zero_shot.json") or {}).get("fingerprint")
    return fa is not None and fa == fb


def accuracy_flops_points(ws: Workspace, others=()) -> pd.DataFrame:
    """Mean accuracy against training FLOPs: this workspace's ensemble (m = its groups),
    baseline (one adapter) and zero-shot, plus the ensembles of `others` that are
    `comparable` (e.g. the same experiment trained with another m). Columns: workspace,
    model, m, training FLOPs, mean accuracy."""
    rows = []
    for i, w in enumerate([ws, *others]):
        report = load_report(w)
        if report is None or (i and not comparable(ws, w)):
            continue
        costs = cost_table(report)
        for m in MODELS if i == 0 else ("ensemble",):
            acc = costs.loc[MODEL_LABELS[m], "Accuracy"]
            if acc is None or pd.isna(acc):
                continue
            k = len(report.get("groups") or []) if m == "ensemble" else 1 if m == "baseline" else 0
            rows.append(
                {
                    "workspace": w.root.name,
                    "model": m,
                    "m": k,
                    "training FLOPs": costs.loc[MODEL_LABELS[m], "training FLOPs"],
                    "mean accuracy": float(acc),
                }
            )
    return pd.DataFrame(
        rows, columns=["workspace", "model", "m", "training FLOPs", "mean accuracy"]
    )


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


# --- the export -----------------------------------------------------------------------------------
def export_tables(ws: Workspace) -> dict[str, pd.DataFrame]:
    """The tables of the export, by file stem."""
    from core.status import affinity_view, groups_frame

    report = load_report(ws) or {}
    tables = {m: metric_table(report, m) for m in METRIC_LABELS}
    tables["costs"] = cost_table(report)
    if report.get("gain"):
        tables["gain"] = gain_table(report)
    if report.get("by_weights") or report.get("inference_forwards_per_example"):
        tables["weights"] = weights_table(report)
    if report.get("boosting"):
        tables["boosting"] = boosting_table(report)
    chosen = ws.read("groupings", "chosen.json")
    if chosen:
        tables["groups"] = groups_frame(chosen["groups"], chosen.get("predicted") or {})
    view = affinity_view(ws)
    if view is not None:
        tables["affinity"] = view["T"]
    return tables


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e4 else f"{value:.3f}"
    return html.escape(str(value))


def _table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [df.index.name or "", *df.columns])
    body = "".join(
        "<tr>"
        + f"<th>{html.escape(str(idx))}</th>"
        + "".join(f"<td>{_fmt(v)}</td>" for v in row)
        + "</tr>"
        for idx, row in zip(df.index, df.itertuples(index=False), strict=True)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ddd;
padding:4px 8px;text-align:right}thead th{background:#f4f6f8}tbody th{text-align:left}
.note{color:#666;font-size:14px}"""


def build_html(ws: Workspace) -> str:
    """The self-contained HTML report (plotly.js inline, so it opens without a network)."""
    from core.status import affinity_view

    report = load_report(ws) or {}
    head = headline(report)
    tables = export_tables(ws)
    figures = [comparison_figure(report, m) for m in METRIC_LABELS]
    figures.append(accuracy_flops_figure(accuracy_flops_points(ws)))
    view = affinity_view(ws)
    if view is not None:
        figures.append(heatmap_figure(view))
    parts = [
        f"<h1>GroupTune report: {html.escape(ws.root.name)}</h1>",
        f"<p class=note>Exported {time.strftime('%Y-%m-%d %H:%M')} from {html.escape(str(ws.root))}"
        ". Ensemble = one adapter per group of related tasks; baseline = one QLoRA adapter "
        "trained on every task; zero-shot = the base model without an adapter.</p>",
    ]
    mean = head["mean_accuracy"]
    parts.append(
        "<p>Mean test accuracy: "
        + ", ".join(f"{MODEL_LABELS[m]} <b>{_fmt(mean[m])}</b>" for m in MODELS)
        + f". Groups: {html.escape(str(head['groups']))}.</p>"
    )
    if head["gain_text"]:
        parts.append(
            f"<p>Ensemble − single adapter (95% paired bootstrap interval): "
            f"<b>{html.escape(head['gain_text'])}</b>. {html.escape(head['gain_verdict'])}</p>"
        )
    if report.get("missing"):
        items = "".join(f"<li>{html.escape(m)}</li>" for m in report["missing"])
        parts.append(f"<p class=note>Not measured yet:</p><ul class=note>{items}</ul>")
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    for name, df in tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2>{_table_html(df)}")
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>GroupTune report: {html.escape(ws.root.name)}</title>"
        f"<style>{_CSS}</style></head><body>{body}</body></html>"
    )


def export_report(ws: Workspace | str) -> dict:
    """Write exports/report.html, one CSV per table and a zip of them all (atomically).
    Returns {"html": path, "zip": path, "csv": {table: path}}."""
    from core.io import write_text

    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    out = ws.path("exports")
    page = build_html(ws)
    csvs = {name: df.to_csv() for name, df in export_tables(ws).items()}
    paths = {"html": write_text(out / "report.html", page), "csv": {}}
    for name, text in csvs.items():
        paths["csv"][name] = write_text(out / f"{name}.csv", text)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("report.html", page)
        for name, text in csvs.items():
            zf.writestr(f"{name}.csv", text)
    paths["zip"] = write_bytes(out / f"grouptune-{ws.root.name}.zip", buf.getvalue())
    return paths
