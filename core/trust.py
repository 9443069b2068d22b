"""The dashboard's view of <ws>/validation.json (core.validation): read, plot, launch.

Imports no torch: the Affinity page's trust panel uses it. The launch is the CLI twin
`grouptune validate-estimate --subsets N --workspace WS`, as a driver job (resources
{"slots": 0}: it only waits on the one training job per subset it submits).
"""

from __future__ import annotations

import pandas as pd

from core.errors import GroupTuneError
from core.validation import DEFAULT_SUBSETS as DEFAULT_SUBSETS  # the page's default N
from core.validation import ROOT, estimated_subsets


def load_validation(ws) -> dict | None:
    """validation.json, or None when validate-estimate has not run."""
    return ws.read("validation.json")


def available_subsets(ws) -> int:
    """How many subsets the estimator sampled (0 before it ran)."""
    try:
        return len(estimated_subsets(ws))
    except GroupTuneError:
        return 0


def command(n: int) -> list[str]:
    """The CLI twin of the dashboard's button (without --workspace)."""
    return ["validate-estimate", "--subsets", str(int(n))]


def submit_validation(ws, n: int) -> int:
    """`grouptune validate-estimate` as a driver job: it only waits on the jobs it submits."""
    from core.jobs import submit

    argv = [*command(n), "--workspace", str(ws.root)]
    return submit(
        ws.root, "validate-estimate", "validate-estimate", argv, resources={"slots": 0}, cwd=ROOT
    )


def active_jobs(jobs: list[dict]) -> list[dict]:
    """Running or queued jobs of a validation (the driver or its fine-tunes)."""
    mine = ("validate-estimate", "train-subset")
    return [
        j
        for j in jobs
        if (j.get("argv") or [""])[0] in mine and j["state"] in ("running", "queued")
    ]


def points_frame(validation: dict) -> pd.DataFrame:
    """The compared (subset, task) rows as a table."""
    return pd.DataFrame(validation["rows"])


def updates_frame(validation: dict) -> pd.DataFrame:
    """One row per fine-tuned subset: its adapter and how far the real update moved."""
    return pd.DataFrame(validation["subsets"])


def trust_figure(validation: dict, metric: str = "loss"):
    """Predicted (x) vs real (y) val `metric` (loss or accuracy) per (subset, task), and y = x."""
    import plotly.graph_objects as go

    df = points_frame(validation)
    x, y = df[f"predicted_{metric}"].tolist(), df[f"real_{metric}"].tolist()
    lo, hi = min(x + y), max(x + y)
    pad = 0.05 * (hi - lo or 1.0)
    fig = go.Figure()
    fig.add_scatter(
        x=x, y=y, mode="markers", name="(subset, task)", marker=dict(size=10, color="#3A6EA5"),
        text=[f"{t} in {s}" for t, s in zip(df["task"], df["subset"], strict=True)],
        hovertemplate="%{text}<br>predicted %{x:.3f}<br>real %{y:.3f}<extra></extra>",
    )  # fmt: skip
    fig.add_scatter(
        x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines", name="y = x",
        line=dict(color="#9AA0A6", dash="dash"), hoverinfo="skip",
    )  # fmt: skip
    label = "val loss (NLL)" if metric == "loss" else "val accuracy"
    fig.update_layout(
        title=f"Predicted vs real {label}", template="plotly_white", height=360,
        margin=dict(l=10, r=10, t=50, b=10),
    )  # fmt: skip
    return fig.update_xaxes(title=f"predicted {label}").update_yaxes(title=f"real {label}")
