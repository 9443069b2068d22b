"""The pipeline's steps, as the CLI and the jobs run them, and the headless `run` driver.

Each step reads its inputs from the workspace, writes its outputs there atomically, and skips
work whose outputs are fresh, so any step can be re-run or resumed at any time:
  gradients -> affinity -> group -> train (group-<i>, baseline) -> boost (round r) -> evaluate
  -> report
"""

from __future__ import annotations

import sys
import time

from core.artifacts import AFFINITY, CHOSEN, REPORT, RUN, SWEEP, VALIDATION
from core.errors import GroupTuneError
from core.stages import BY_NAME, command
from core.workspace import Workspace


# --- estimation ------------------------------------------------------------------------------
def gradients(cfg, ws: Workspace, tasks: list[str] | None = None) -> dict:
    """Gradient features for the given tasks (default all), with accounting of the stage."""
    from core.accounting import Accounting, Meter
    from core.gradients.extract import extract_features

    with Meter() as meter:
        result = extract_features(cfg, ws, tasks)
    for task, r in result.items():
        if r["rows_computed"]:
            entry = {
                "wall_seconds": r["seconds"],
                "examples": r["rows_computed"],
                "flops": r.get("flops", 0),
                "train_flops": r.get("train_flops", 0),
                "val_flops": r.get("val_flops", 0),
                "tokens": r.get("tokens", 0),
                "method": r.get("flops_method", "none"),
                "peak_memory_bytes": meter.peak_memory()["peak_memory_bytes"],
            }
            Accounting(ws).record("gradients", entry, part=task)
    return result


def check_methods(cfg) -> None:
    """Fail before any work on an estimator or grouping method that no registry has."""
    from core.estimate.methods import method_class as estimator
    from core.grouping.methods import method_class as grouping

    estimator(cfg.estimator.method)
    grouping(cfg.grouping.method)


def affinity(cfg, ws: Workspace) -> dict:
    from core.accounting import Accounting, Meter
    from core.estimate.affinity import compute_affinity
    from core.locks import artifact_lock, lock_path

    check_methods(cfg)

    with artifact_lock(lock_path(ws.root, "step", "affinity"), "the affinity matrix"):
        before = (AFFINITY.read(ws) or {}).get("fingerprint")
        with Meter() as meter:
            result = compute_affinity(cfg, ws)
    if result.get("fingerprint") != before:  # not a cache hit: record what the work cost
        Accounting(ws).record(
            "estimation",
            {
                "wall_seconds": meter.wall_seconds,
                "flops": result.get("estimator_flops", 0),
                "method": f"analytic ({cfg.estimator.method} on stored features)",
                "peak_memory_bytes": meter.peak_memory()["peak_memory_bytes"],
            },
        )
    return result


# --- grouping --------------------------------------------------------------------------------
def _affinity_inputs(ws: Workspace):
    import numpy as np

    data = AFFINITY.need(ws)
    return np.asarray(data["affinity"], dtype=float), list(data["tasks"]), data.get("fingerprint")


def sweep(cfg, ws: Workspace) -> list[dict]:
    """Every m and method with predicted per-task accuracy; cached while current
    (core.grouping.freshness.sweep_fresh, which the Groups page shows too)."""
    from core.estimate.whatif import WhatIf
    from core.grouping import choose
    from core.grouping.freshness import sweep_fresh, sweep_inputs

    if sweep_fresh(cfg, ws):
        return SWEEP.need(ws)["entries"]
    T, names, _ = _affinity_inputs(ws)
    whatif = WhatIf.from_workspace(cfg, ws)
    entries = choose.sweep(T, names, whatif.predict, random_state=cfg.grouping.seed)
    SWEEP.write(ws, {"fingerprint": sweep_inputs(cfg, ws), "entries": entries})
    return entries


def group(
    cfg, ws: Workspace, m: int | None = None, method: str | None = None, force: bool = False
) -> dict:
    """Choose the partition to train: m from the argument, the config, or the recommendation.

    Without m, method or force, a current choice (core.grouping.freshness) is kept: so is a
    grouping edited by hand, until the affinity or the grouping settings change."""
    from core.grouping.choose import prediction_uncertainty, recommend_m
    from core.grouping.freshness import grouping_inputs, grouping_status
    from core.grouping.methods import method_class

    if m is None and method is None and not force and grouping_status(cfg, ws) == "fresh":
        return CHOSEN.need(ws)
    method = method or cfg.grouping.method
    m = m or cfg.grouping.m
    if m is None and not method_class(method).swept:  # an unknown name fails here, listing all
        raise GroupTuneError(f"grouping method {method!r} is a control: give m (--m, grouping.m)")
    entries = sweep(cfg, ws)
    reason, uncertainty = "chosen by the user", None
    if m is None:
        mine = [e for e in entries if e["method"] == method]
        best = max(mine, key=lambda e: e["mean_accuracy"])
        uncertainty = prediction_uncertainty(best, *_uncertainty_inputs(cfg, ws))
        m, method, reason = recommend_m(mine, uncertainty=uncertainty)
    n = len(entries[0]["predicted"])
    if not 1 <= m <= n:
        raise GroupTuneError(f"m must be between 1 and {n} (the number of tasks), got {m}")
    entry = next((e for e in entries if e["m"] == m and e["method"] == method), None)
    if entry is None:  # a method the sweep does not score (the random control)
        entry, reason = _one_grouping(cfg, ws, m, method), f"{method} grouping, chosen by the user"
    chosen = {**entry, "reason": reason, "source": "sweep", "uncertainty": uncertainty}
    CHOSEN.write(ws, chosen | {"inputs": grouping_inputs(cfg, ws)})
    ws.write(chosen, "groupings", f"m{m}.json")
    return chosen


def _one_grouping(cfg, ws: Workspace, m: int, method: str) -> dict:
    from core.estimate.whatif import WhatIf
    from core.grouping.choose import scored
    from core.grouping.methods import method_class

    T, names, _ = _affinity_inputs(ws)
    est = method_class(method)(m=m, random_state=cfg.grouping.seed).fit(T)
    return scored(est, names, WhatIf.from_workspace(cfg, ws).predict)


def _uncertainty_inputs(cfg, ws: Workspace) -> tuple[dict, float | None]:
    """(val rows per task, RMS accuracy error of the last validate-estimate or None)."""
    import numpy as np

    from core.data.sources import load_tasks
    from core.validate.trust import checked_current

    rows = {t.name: len(t.rows("val")) for t in load_tasks(cfg)}
    checked = VALIDATION.read(ws) or {}
    points = checked.get("rows") or []
    if not points or not checked_current(checked, ws):
        return rows, None
    errors = [p["predicted_accuracy"] - p["real_accuracy"] for p in points]
    return rows, float(np.sqrt(np.mean(np.square(errors))))


def edit_groups(cfg, ws: Workspace, groups: list[list[str]]) -> dict:
    """Use a hand-edited partition: validate it, predict it, make it the chosen one."""
    import numpy as np

    from core.estimate.whatif import WhatIf
    from core.grouping.freshness import grouping_inputs
    from core.grouping.partition import clustering_objective

    T, names, _ = _affinity_inputs(ws)
    predicted = WhatIf.from_workspace(cfg, ws).predict(groups)
    chosen = {
        "m": len(groups),
        "method": "edited",
        "groups": groups,
        "objective": clustering_objective(T, groups, names),
        "predicted": predicted,
        "mean_accuracy": float(np.mean([p["accuracy"] for p in predicted.values()])),
        "mean_loss": float(np.mean([p["loss"] for p in predicted.values()])),
        "reason": "edited by the user",
        "source": "edited",
        "inputs": grouping_inputs(cfg, ws),
    }
    CHOSEN.write(ws, chosen)
    return chosen


def chosen_groups(ws: Workspace) -> list[list[str]]:
    return CHOSEN.need(ws)["groups"]


def mix(cfg, ws: Workspace, group: int | None, weights: dict | None = None, **suggest) -> dict:
    """Mixing weights for one adapter's tasks (group `group` of the chosen grouping; None: the
    single adapter on every task): the given weights' predicted effect against uniform, or,
    with suggest (objective=..., protect=...), weights suggested by the estimate
    (core.estimate.mixing). Written to groupings/mix-<group|all>.json for the dashboard."""
    from core.estimate.mixing import effect, predict_mix, suggest_mix
    from core.gradients.store import load_features

    if group is None:
        tasks, label = list(cfg.task_names), "all"
    else:
        groups = chosen_groups(ws)
        if not 0 <= group < len(groups):
            raise GroupTuneError(f"no group {group}: the chosen grouping has {len(groups)}")
        tasks, label = [t for t in cfg.task_names if t in groups[group]], str(group)
    unknown = sorted(set(weights or {}) - set(tasks))
    if unknown:
        raise GroupTuneError(f"weights for task(s) {unknown} that the adapter does not train on")
    feats = [load_features(ws, t) for t in tasks]
    tcfg, orders = cfg.training, cfg.estimator.orders
    if suggest:
        out = suggest_mix(feats, tcfg, orders, **suggest)
    else:
        predicted, uniform = (
            predict_mix(feats, tcfg, orders, weights),
            predict_mix(feats, tcfg, orders, None),
        )
        w = {t: float((weights or {}).get(t, 1.0)) for t in tasks}
        out = {"weights": w, "predicted": predicted, "uniform": uniform}
        out["effect"] = effect(predicted, uniform)
    out.update(group=label, tasks=tasks)
    ws.write(out, "groupings", f"mix-{label}.json")
    return out


# --- training and evaluation ------------------------------------------------------------------
def train(cfg, ws: Workspace, which: str = "all") -> dict:
    """Train adapters: "all", "groups", "baseline" or one adapter name ("group-0")."""
    from core.ensemble.manifest import group_adapter_name, sync_manifest
    from core.train.trainer import train_adapter

    groups = chosen_groups(ws) if which != "baseline" else []
    jobs = {group_adapter_name(i): g for i, g in enumerate(groups)}
    if which in ("all", "baseline"):
        jobs["baseline"] = list(cfg.task_names)
    if which not in ("all", "groups", "baseline"):
        if which not in jobs:
            raise GroupTuneError(f"no adapter {which!r}: the chosen groups give {sorted(jobs)}")
        jobs = {which: jobs[which]}
    for name, tasks in jobs.items():
        if _regrouped(ws, name, tasks):
            _set_aside(ws, name)
    results = {name: train_adapter(cfg, ws, name, tasks) for name, tasks in jobs.items()}
    if groups:
        sync_manifest(cfg, ws, groups)  # by whichever group job finishes last
    return {
        name: {"best_epoch": r.get("best_epoch"), "val": r.get("val_metrics", {}).get("mean")}
        for name, r in results.items()
    }


def _set_aside(ws: Workspace, name: str) -> None:
    """Move a finished adapter whose group changed to its task-set name (`subset-<hash>`, as
    validate-estimate names them), where a later group with those tasks finds and reuses it
    (core.train.twins.find_twin); unfinished work on the old task set is dropped."""
    import shutil

    from core.io import read_json, write_json
    from core.validate.subsets import adapter_name

    folder = ws.adapter_dir(name)
    record = folder / "grouptune.json"
    target = ws.adapter_dir(adapter_name(read_json(record)["tasks"])) if record.exists() else None
    if target is None or target.exists():
        shutil.rmtree(folder, ignore_errors=True)
        return
    shutil.rmtree(folder / "checkpoint", ignore_errors=True)
    folder.rename(target)
    moved = read_json(target / "grouptune.json")
    moved.update(name=target.name, path=str(target))
    write_json(target / "grouptune.json", moved)


def _regrouped(ws: Workspace, name: str, tasks: list[str]) -> bool:
    """True when adapter `name` holds work on another task set (the grouping changed since):
    it is retrained from scratch rather than refused as stale."""
    from core.io import read_json

    folder = ws.adapter_dir(name)
    for path, key in (
        (folder / "grouptune.json", ("tasks",)),
        (folder / "checkpoint" / "state.json", ("fingerprint", "data", "tasks")),
    ):
        if path.exists():
            data = read_json(path)
            for k in key:
                data = data.get(k, {}) if isinstance(data, dict) else {}
            return sorted(data) != sorted(tasks)
    return False


# --- the headless driver -----------------------------------------------------------------------
def step_resources(cfg, step: str, gpus_present: bool) -> dict:
    """What a job of `step` (e.g. "train:group-0") asks of its backend: the config's
    jobs.resources for its kind; else nothing beyond the backend's default (one CPU on Ray, the
    machine's threads locally), plus 1 GPU for a model step when the backend has GPUs."""
    from core.config import MODEL_STEPS

    kind = step.split(":")[0]
    given = cfg.jobs.resources.get(kind)
    if given is not None:
        return {k: v for k, v in given.model_dump().items() if v != {}}
    return {"gpus": 1} if gpus_present and kind in MODEL_STEPS else {}


def _submitter(cfg, ws: Workspace, backend):
    from core.jobs import get_backend, submit

    gpus = (backend or get_backend("local")).gpus() > 0

    def _submit(ws: Workspace, step: str, argv: list[str], depends_on=(), backend=backend) -> int:
        argv = [*argv, "--workspace", str(ws.root)]
        kw = {"depends_on": depends_on, "backend": backend}
        kw["reuse_workers"] = (
            cfg.jobs.reuse_workers and getattr(backend, "name", "local") == "local"
        )
        return submit(ws.root, step, step, argv, resources=step_resources(cfg, step, gpus), **kw)

    return _submit


def _wait_ok(ws: Workspace, ids: list[int]) -> None:
    from core.jobs import wait

    jobs = wait(ws.root, ids)
    failed = [j for j in jobs.values() if j["state"] != "done"]
    if failed:
        lines = "; ".join(f"job {j['id']} ({j['step']}) {j['state']}: {j['error']}" for j in failed)
        raise GroupTuneError(
            f"pipeline stopped: {lines}. See `grouptune jobs logs ID`; "
            "`grouptune run` again resumes where it stopped."
        )


def baseline_after(groups: list[list[str]], tasks: list[str], train_jobs: list[int]) -> list[int]:
    """The group job whose adapter is the baseline's twin (a group of every task, as at m = 1),
    for the baseline's job to wait on: then it copies the finished twin instead of training
    the same adapter again beside it (jobs run at once on Ray or with GROUPTUNE_MAX_JOBS)."""
    return [job for g, job in zip(groups, train_jobs, strict=True) if sorted(g) == sorted(tasks)]


def run(cfg, ws: Workspace, backend=None, log=None) -> dict:
    """Run every stage as background jobs in dependency order; return report.json.

    Fresh outputs are skipped inside each step, so re-running resumes. The groups are only
    known after grouping, so training is submitted in a second wave.
    """
    from core.gradients.store import store_status

    check_methods(cfg)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    _submit = _submitter(cfg, ws, backend)
    timings, start = {}, time.monotonic()
    status = store_status(ws, cfg)
    stale = [t for t, s in status.items() if s != "fresh"]
    log(f"gradients: {len(stale)} of {len(status)} tasks to compute")
    # one job per task spreads over a cluster; on one machine one job loads the model once
    shards = [[t] for t in stale] if backend is not None else ([stale] if stale else [])
    grad_jobs = [
        _submit(
            ws,
            "gradients:" + "+".join(s),
            command("gradients", task=s),
            backend=backend,
        )
        for s in shards
    ]
    aff = _submit(ws, "affinity", command("affinity"), grad_jobs, backend)
    grp = _submit(ws, "group", command("group"), [aff], backend)
    # queued after the estimation jobs, so the groups are known as early as possible
    zero = _submit(ws, "evaluate:zero-shot", command("evaluate", zero_shot=True), backend=backend)
    _wait_ok(ws, [*grad_jobs, aff, grp])  # zero-shot may still be running
    timings["estimation"] = time.monotonic() - start
    groups = chosen_groups(ws)
    log(f"groups (m={len(groups)}): {groups}")
    train = BY_NAME["training"]
    trains = [
        _submit(ws, train.job(a), train.argv(a), backend=backend)
        for a in (f"group-{i}" for i in range(len(groups)))
    ]
    after = baseline_after(groups, [t.name for t in cfg.tasks], trains)
    trains.append(_submit(ws, train.job("baseline"), train.argv("baseline"), after, backend))
    # boosting rounds: each on the ensemble of the group adapters and the rounds before it
    boosts, after = [], trains[:-1]
    for r in range(cfg.ensemble.boosting):
        boost = BY_NAME["boosting"]
        after = [_submit(ws, boost.job(str(r)), boost.argv(str(r)), after, backend)]
        boosts += after
    ev = _submit(ws, "evaluate", command("evaluate"), [*trains, *boosts, zero], backend)
    rep = _submit(ws, "report", command("report"), [ev], backend)
    _wait_ok(ws, [*trains, *boosts, zero, ev, rep])
    timings["total"] = time.monotonic() - start
    timings["training_and_evaluation"] = timings["total"] - timings["estimation"]
    report = REPORT.read(ws)
    RUN.write(ws, {"wall_seconds": timings, "finished": time.time()})
    return report
