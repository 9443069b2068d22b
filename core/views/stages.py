"""Where an experiment stands, read from its workspace without loading a model (no torch).

The dashboard and `grouptune` share this view of a workspace: one row per unit of work
(a task's gradient store, the affinity matrix, the chosen grouping, each adapter, each
evaluation, the report), each in one of the states

  fresh    done, and made from the current config and inputs
  stale    done, but its config or inputs changed since (the reason is given)
  partial  started and checkpointed, not finished
  missing  not done yet
  running / queued / failed   a background job for it is in that state

plus `next_step`, the command(s) that move the experiment forward. Every command is a
`grouptune` argv, the same a user would type and a job runs (`submit_step`).
"""

from __future__ import annotations

import pandas as pd

from core.artifacts import AFFINITY, CHOSEN, MANIFEST, REPORT
from core.config import ExperimentConfig
from core.data.tasks import content_hashes
from core.stages import BY_NAME, STAGES
from core.views.jobs import ACTIVE, latest_jobs
from core.workspace import Workspace


def gradient_status(ws: Workspace, cfg: ExperimentConfig, tasks) -> dict[str, str]:
    """core.gradients.store.store_status, the engine's own rule: 'fresh', 'stale (why)',
    'partial (x/n)' or 'missing' per task."""
    from core.gradients.store import store_status

    return store_status(ws, cfg, tasks)


def gradient_table(ws: Workspace, cfg: ExperimentConfig, tasks, jobs=()):
    """Per task: store status, rows done / total, extraction seconds, finished time, and the
    newest gradients job (state). Columns: task, status, rows, seconds, finished, job."""
    from core.io import read_json

    grads = gradient_status(ws, cfg, tasks)
    latest = latest_jobs(list(jobs))
    rows = []
    for task in tasks:
        folder = ws.features_dir(task.name)
        try:
            meta = read_json(folder / "meta.json")
        except (OSError, ValueError):
            meta = {}
        total = sum((meta.get("rows") or {}).values())
        done = sum((meta.get("done") or {}).values()) if meta.get("done") else None
        job = latest.get(("gradients", task.name)) or latest.get(("gradients", "*"))
        rows.append(
            {
                "task": task.name,
                "status": grads[task.name],
                "rows": f"{done if done is not None else '?'}/{total}" if meta else "—",
                "seconds": meta.get("seconds"),
                "finished": meta.get("finished"),
                "job": f"{job['id']} {job['state']}" if job else "",
            }
        )
    return pd.DataFrame(rows, columns=["task", "status", "rows", "seconds", "finished", "job"])


def _row(stage: str, item: str, status: str, detail: str = "") -> dict:
    """A stage view row from an engine status ('fresh', 'stale (why)', 'partial (x/n)', ...)."""
    state = status.split(" ", 1)[0]
    if status.endswith(")") and " (" in status:
        detail = detail or status[status.index("(") + 1 : -1]
    return {"stage": stage, "item": item, "state": state, "detail": detail}


def affinity_state(ws: Workspace, cfg: ExperimentConfig, grads: dict[str, str]) -> dict:
    """The affinity matrix: core.estimate.affinity.affinity_status, the rule the engine uses to
    skip it, once every task's gradients are fresh (its inputs)."""
    from core.estimate.affinity import affinity_status

    if AFFINITY.read(ws) is None:
        return _row("affinity", "affinity", "missing")
    not_fresh = [t for t, s in grads.items() if s != "fresh"]
    if not_fresh:
        return _row("affinity", "affinity", "stale", f"gradients not fresh: {not_fresh}")
    return _row("affinity", "affinity", affinity_status(ws, cfg))


def grouping_state(ws: Workspace, cfg: ExperimentConfig, aff_state: str) -> dict:
    """The chosen grouping's state: core.grouping.freshness.grouping_status, the rule
    `grouptune group` keeps a current choice by, once the affinity itself is current."""
    from core.grouping.freshness import grouping_status

    state = grouping_status(cfg, ws)
    if state == "fresh" and aff_state != "fresh":
        return _row("grouping", "chosen", "stale", "the affinity matrix is not current")
    if state != "fresh":
        return _row("grouping", "chosen", state)
    chosen = CHOSEN.need(ws)
    return _row("grouping", "chosen", "fresh", f"m={chosen['m']} ({chosen['method']})")


def expected_adapters(ws: Workspace, cfg: ExperimentConfig) -> dict[str, list[str]]:
    """Adapter name -> its tasks: group-<i> per chosen group, then the all-task baseline."""
    chosen = CHOSEN.read(ws) or {}
    out = {f"group-{i}": list(g) for i, g in enumerate(chosen.get("groups", []))}
    out["baseline"] = list(cfg.task_names)
    return out


def adapter_state(
    ws: Workspace, cfg: ExperimentConfig, name: str, tasks: list[str], hashes: dict | None = None
) -> dict:
    """An adapter's state: core.train.freshness.adapter_status, the rule the trainer itself
    uses to skip a finished adapter (`hashes`: task -> Task.content_hash(), when given)."""
    from core.train.freshness import adapter_status

    return _row("training", name, adapter_status(ws, cfg, name, tasks, hashes))


def boosting_states(ws: Workspace, cfg: ExperimentConfig) -> list[dict]:
    """One row per configured boosting round: fresh when the manifest holds it, made on the
    weights the config asks for (core.ensemble.boosting.missing_rounds, the engine's own rule)."""
    from core.ensemble.boosting import boost_name, missing_rounds

    manifest = MANIFEST.read(ws)
    todo = missing_rounds(cfg, manifest)
    detail = "" if manifest else "after the group adapters"
    return [
        _row("boosting", boost_name(r), "missing" if r in todo else "fresh", detail)
        for r in range(cfg.ensemble.boosting)
    ]


def boosting_todo(ws: Workspace, cfg: ExperimentConfig) -> bool:
    """Whether some configured boosting round is not made yet."""
    return any(r["state"] != "fresh" for r in boosting_states(ws, cfg))


def evaluation_states(ws: Workspace, cfg: ExperimentConfig, hashes: dict) -> list[dict]:
    """zero_shot, baseline and ensemble: fresh when evaluated on today's base model, test rows
    and adapters (core.train.eval_status, the rule `grouptune evaluate` skips by)."""
    from core.train.eval_status import MODELS, eval_status

    return [_row("evaluation", model, eval_status(ws, cfg, model, hashes)) for model in MODELS]


def report_state(ws: Workspace) -> dict:
    """report.json's state: core.report.freshness.report_status, the rule `grouptune report`
    keeps a current report by."""
    from core.report.freshness import report_status

    state = report_status(ws)
    if state != "fresh":
        return _row("report", "report", state)
    missing = REPORT.need(ws).get("missing") or []
    return _row("report", "report", "fresh", f"{len(missing)} parts missing" if missing else "")


def experiment_status(ws: Workspace, cfg: ExperimentConfig, tasks, jobs=None) -> list[dict]:
    """One row per unit of work: {"stage", "item", "state", "detail"}, in pipeline order,
    with running/queued/failed jobs overriding the file-based state of what they work on."""
    grads = gradient_status(ws, cfg, tasks)
    hashes = content_hashes(tasks)
    rows = [_row("gradients", t, s) for t, s in grads.items()]
    aff = affinity_state(ws, cfg, grads)
    rows.append(aff)
    rows.append(grouping_state(ws, cfg, aff["state"]))
    for name, group in expected_adapters(ws, cfg).items():
        rows.append(adapter_state(ws, cfg, name, group, hashes))
    rows += boosting_states(ws, cfg)
    rows += evaluation_states(ws, cfg, hashes)
    rows.append(report_state(ws))
    latest = latest_jobs(jobs or [])
    for row in rows:
        job = latest.get((row["stage"], row["item"])) or latest.get((row["stage"], "*"))
        if job is None or job["state"] in ("done", "cancelled"):
            continue
        if job["state"] in ACTIVE:
            row["state"], row["detail"] = (
                job["state"],
                f"job {job['id']} {job.get('message') or ''}",
            )
        elif row["state"] != "fresh":  # failed, and nothing done since
            row["state"], row["detail"] = "failed", f"job {job['id']}: {job.get('error') or ''}"
    return rows


LABELS = {s.name: s.label for s in STAGES}


def stage_summary(rows: list[dict]) -> list[dict]:
    """Per stage, in pipeline order: {"stage", "label", "state" (the most urgent of its rows:
    running, queued, failed, stale, partial, missing, then fresh), "fresh", "total"}."""
    order = ["running", "queued", "failed", "stale", "partial", "missing", "fresh"]
    out = []
    for stage, label in LABELS.items():
        mine = [r for r in rows if r["stage"] == stage]
        if not mine:
            continue
        state = min((r["state"] for r in mine), key=order.index)
        fresh = sum(r["state"] == "fresh" for r in mine)
        out.append(
            {"stage": stage, "label": label, "state": state, "fresh": fresh, "total": len(mine)}
        )
    return out


def next_step(rows: list[dict]) -> dict | None:
    """The first stage that is not fresh: {"stage", "title", "why", "argvs", "busy"}.

    argvs: the `grouptune` commands (without --workspace) that do it, one job each; busy: a
    job is already working on it. None when everything is fresh.
    """
    for stage in LABELS:
        todo = [r for r in rows if r["stage"] == stage and r["state"] != "fresh"]
        if not todo:
            continue
        busy = any(r["state"] in ACTIVE for r in todo)
        items = [r["item"] for r in todo if r["state"] not in ACTIVE]
        # one job per task or adapter; boosting: one job, each round builds on the one before
        per_item = stage in ("gradients", "training")
        argvs = [BY_NAME[stage].argv(i) for i in items] if per_item else [BY_NAME[stage].argv()]
        titles = {
            "gradients": f"Compute gradient features of {len(items)} task(s)",
            "affinity": "Estimate the task affinity matrix",
            "grouping": "Choose the task groups",
            "training": f"Train {len(items)} adapter(s)",
            "boosting": f"Fit the ensemble weights and {len(items)} boosting round(s)",
            "evaluation": "Evaluate zero-shot, baseline and ensemble on the test splits",
            "report": "Write the comparison report",
        }
        why = "; ".join(f"{r['item']}: {r['state']}" for r in todo[:6])
        return {
            "stage": stage,
            "title": titles[stage],
            "why": why,
            "argvs": argvs if items else [],
            "busy": busy,
        }
    return None
