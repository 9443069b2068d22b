"""The dashboard's view of <ws>/validation.json (core.validate.validation): read, judge, plot, launch.

Imports no torch: the Affinity page's trust panel and the Groups page use it. The launch is the CLI twin
`grouptune validate-estimate --subsets N --workspace WS`, as a driver job (resources
{"slots": 0}: it only waits on the one training job per subset it submits).
"""

from __future__ import annotations

import pandas as pd

from core.artifacts import AFFINITY, VALIDATION
from core.errors import GroupTuneError
from core.stages import command as grouptune_command
from core.validate.subsets import DEFAULT_SEEDS as DEFAULT_SEEDS
from core.validate.subsets import DEFAULT_SUBSETS as DEFAULT_SUBSETS  # the page's default N
from core.validate.subsets import ROOT, estimated_subsets
from core.validate.validation import config_rows, verdict

# At 48-100 train rows per task, one real fine-tune orders a task's subsets like the mean of the
# other seeds in only 74-82% of pairs (bench/results/agreement-claims.json, by task half): below
# ~100 rows, training noise alone reorders many subsets.
MIN_TRAIN_ROWS = 100
FIRM_CEILING = 0.80  # one seed vs the others below this: the groupings' differences are soft
GOOD_GAP = 0.05  # order agreement within this of the noise ceiling: as good as it gets
CHANCE_BAND = 0.60  # below this the estimate's ordering is close to chance (0.5)
MIN_PAIRS = 20  # fewer same-task pairs than this: an agreement figure says little (±20 points)


# What a sketch costs the estimate: the replay on exact B-gradients (k 0) and on CountSketch
# features, scored on the agreement bench's held-out tasks against the mean of three real
# fine-tunes (bench/results/agreement-claims.json, part "held_out"; tests/test_trust.py ties
# these figures to that file): k -> (variant, order agreement, within-task loss correlation).
SKETCH_COST = {
    0: ("replay-R8", 0.84, 0.96),
    4096: ("replay-R16-cs4096", 0.82, 0.71),
    400: ("replay-R16-cs400", 0.71, 0.44),
}


def projection_note(projection: dict | None) -> str | None:
    """A sentence on what this workspace's feature projection costs in agreement, or None for
    exact features. `projection` is a feature store's resolved {"kind", "k"} (what "auto"
    became)."""
    if not projection or projection.get("kind") in (None, "identity"):
        return None
    k = int(projection.get("k") or 0)
    measured = min((c for c in SKETCH_COST if c), key=lambda c: abs(c - k))
    _, order, corr = SKETCH_COST[measured]
    _, exact_order, exact_corr = SKETCH_COST[0]
    near = "" if measured == k else f" (k = {k} was not measured; the nearest is k = {measured})"
    return (
        f"The features are a {projection['kind']} sketch of k = {k} dimensions, not the exact "
        f"gradients. On the agreement bench's held-out tasks a CountSketch of k = {measured} "
        f"ordered subsets like the real fine-tunes' mean in {order:.0%} of pairs (exact: "
        f"{exact_order:.0%}) and its within-task loss correlation was {corr:.2f} (exact: "
        f"{exact_corr:.2f}){near}. Exact features (features.projection: identity) are better "
        "where the store fits."
    )


def workspace_projection(ws, cfg) -> dict | None:
    """The projection the workspace's features were made with (first task's store), or None
    before the gradients step."""
    for task in cfg.task_names:
        meta = ws.read("features", task, "meta.json")
        if meta:
            return (meta.get("resolved") or {}).get("projection")
    return None


def verdict_line(validation: dict | None) -> tuple[str, str]:
    """(level, sentence) on how far this workspace's estimate can be trusted for grouping:
    level "unchecked", "thin", "good", "partial" or "noise" (the page shows it as a colour).
    The headline is the estimate against the mean of the real seeds, with its interval,
    beside one real seed against the others' mean; never the seed-matched figure."""
    if validation is None:
        return "unchecked", (
            "Not checked against real fine-tunes yet: the groupings rest on an untested estimate."
        )
    s = validation["summary"]
    mine, ceiling = s.get("order_agreement_vs_mean"), s.get("ceiling_order_agreement_loo")
    pairs = s.get("pairs") or 0
    if mine is None:
        return "unchecked", "The check has too few subsets per task to compare orderings."
    if pairs < MIN_PAIRS:
        return "thin", (
            f"Too few pairs to judge: {pairs} same-task pairs of subsets were compared (at "
            f"least {MIN_PAIRS} are needed for a figure worth reading); fine-tune more subsets."
        )
    ci = s.get("order_agreement_vs_mean_ci")
    spread = f" (95% interval {ci[0]:.0%}-{ci[1]:.0%})" if ci else ""
    seeds = s.get("seeds")
    against = "" if ceiling is None else f"; one real fine-tune against the others: {ceiling:.0%}"
    line = (
        f"orders a task's subsets like the mean of {seeds} real fine-tunes in {mine:.0%} of "
        f"{pairs} pairs{spread}{against}"
    )
    soft = ""
    if ceiling is not None and ceiling < FIRM_CEILING:
        soft = (
            f" One real fine-tune agrees with the others on only {ceiling:.0%} of pairs, so part "
            "of what separates the groupings is training noise; more rows per task make it "
            "firmer."
        )
    if ceiling is not None and mine >= ceiling - GOOD_GAP:
        return "good", (
            f"The estimate {line}: about as well as a real fine-tune does, or better.{soft}"
        )
    if mine >= CHANCE_BAND:
        return "partial", f"The estimate {line}: groupings are a guide, not a verdict.{soft}"
    return "noise", f"The estimate {line}, close to chance (50%): groupings rest on noise."


def small_tasks(task_rows: dict) -> list[str]:
    """Tasks with fewer train rows than the bench showed the estimate needs."""
    return sorted(t for t, rows in task_rows.items() if rows.get("train", 0) < MIN_TRAIN_ROWS)


def rows_warning(cfg) -> str | None:
    """A sentence naming the tasks too small for a trustworthy estimate, or None."""
    small = small_tasks(config_rows(cfg))
    if not small:
        return None
    return (
        f"{len(small)} task(s) have fewer than {MIN_TRAIN_ROWS} train rows ({', '.join(small)}). "
        "With so few rows two real fine-tunes that differ only in their training seed often "
        "order a task's subsets differently (bench/agreement.py), so differences between "
        "groupings can be noise; raise data.max_train or add rows for firmer groups."
    )


def number(value, spec: str = ".2f") -> str:
    """A metric for display: '—' for None."""
    return "—" if value is None else format(value, spec)


def load_validation(ws) -> dict | None:
    """validation.json, or None when validate-estimate has not run. Its verdict is judged
    again from its summary, so a file written by an older version reads by today's rules."""
    doc = VALIDATION.read(ws)  # its keys checked: a summary is there
    if doc is not None:
        comparable = (doc.get("settings") or {}).get("loss_comparable", True)
        doc["verdict"] = verdict(doc["summary"], comparable)
    return doc


def checked_current(checked: dict, ws) -> bool:
    """Whether a validation was made on the workspace's current estimates (its affinity
    fingerprint is affinity.json's)."""
    return checked.get("affinity_fingerprint") == (AFFINITY.read(ws) or {}).get("fingerprint")


def available_subsets(ws) -> int:
    """How many subsets the estimator sampled (0 before it ran)."""
    try:
        return len(estimated_subsets(ws))
    except GroupTuneError:
        return 0


def command(n: int, seeds: int = DEFAULT_SEEDS) -> list[str]:
    """The CLI twin of the dashboard's button (without --workspace)."""
    return grouptune_command("validate-estimate", subsets=int(n), seeds=int(seeds))


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
