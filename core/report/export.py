"""The report a stakeholder opens: the figures (core.report.figures) and tables
(core.report.tables) of a workspace in one self-contained file. Nothing is guessed: a cost or
metric that was not measured is None and shown as "—".

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

from core.artifacts import CHOSEN
from core.io import write_bytes
from core.report.figures import (
    METRIC_LABELS,
    MODEL_LABELS,
    MODELS,
    accuracy_flops_figure,
    comparison_figure,
    heatmap_figure,
)
from core.report.tables import (
    accuracy_flops_points,
    boosting_table,
    cost_table,
    gain_table,
    headline,
    load_report,
    metric_table,
    weights_table,
)
from core.workspace import Workspace


def export_tables(ws: Workspace) -> dict[str, pd.DataFrame]:
    """The tables of the export, by file stem."""
    from core.report.frames import affinity_view, groups_frame

    report = load_report(ws) or {}
    tables = {m: metric_table(report, m) for m in METRIC_LABELS}
    tables["costs"] = cost_table(report)
    if report.get("gain"):
        tables["gain"] = gain_table(report)
    if report.get("by_weights") or report.get("inference_forwards_per_example"):
        tables["weights"] = weights_table(report)
    if report.get("boosting"):
        tables["boosting"] = boosting_table(report)
    chosen = CHOSEN.read(ws)
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
    from core.report.frames import affinity_view

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
        ". Ensemble = one adapter per group of related tasks (here "
        f"{len(head['groups'] or [])} group(s)) with its fitted weights and boosting rounds; "
        "baseline = one QLoRA adapter trained on every task; zero-shot = the base model "
        "without an adapter.</p>",
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
    if head["gain_parts_text"]:
        parts.append(f"<p>Where it comes from: {html.escape(head['gain_parts_text'])}.</p>")
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
