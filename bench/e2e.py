"""Benchmark: `grouptune run sample_data/quick_distinct.yaml` end to end, fast path against plain path.

Runs the whole pipeline as the product runs it (background jobs, one at a time) twice, in
fresh workspaces, one after the other on the same machine:
  fast    sample_data/quick_distinct.yaml as shipped (top 8 layers, frozen-prefix cache on)
  plain   the same with adapter.cache_lower_layers: false (every pass through all 30 layers)
  cold    fast without the quantised-base cache (GROUPTUNE_QUANTIZED_CACHE=0): every job
          quantises the base again, as every job did before that cache
  chain   fast with jobs.reuse_workers: true (one worker runs each next ready job itself)
  ray     fast with --backend ray (a local Ray instance): must give fast's report
and then, in the fast workspace, once more with a seventh task added (rotten_tomatoes), which
must compute only that task's features and what depends on them.

Per run: total wall time, the estimation stage (gradients + affinity + group jobs), each job's
time from the job database, and the report's test accuracies (which must agree between the
two paths). Writes bench/results/e2e.json.

    .venv/bin/python bench/e2e.py [--paths fast plain] [--no-added-task] [--tag before]

Each run also says how much of its wall time was not a stage's compute (`startup_share`: worker
start, imports, model loads, skip checks, data, writes and the gaps between jobs), from the
timing record each worker writes at the end of its job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
HERE = ROOT / "workspaces" / "bench-e2e"
ESTIMATION = ("gradients", "affinity", "group")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# what each path changes from sample_data/quick_distinct.yaml as shipped: config, environment, CLI flags
PATHS = {
    "fast": {},
    "plain": {"config": {"adapter": {"cache_lower_layers": False}}},
    "cold": {"env": {"GROUPTUNE_QUANTIZED_CACHE": "0"}},
    "chain": {"config": {"jobs": {"reuse_workers": True}}},
    "ray": {"args": ["--backend", "ray"]},
}


def write_config(name: str, changes: dict, extra_task: str | None = None) -> Path:
    cfg = yaml.safe_load((ROOT / "sample_data" / "quick_distinct.yaml").read_text())
    cfg["data"]["root"] = str(ROOT / "sample_data" / "tasks")
    for section, values in changes.items():
        cfg.setdefault(section, {}).update(values)
    if extra_task:
        cfg["tasks"].append(extra_task)
    path = HERE / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def job_times(ws: Path, since: float) -> list[dict]:
    """Each job finished after `since`: step, seconds it ran, and the worker's timing record
    (core.jobs.runner): seconds before the step began, in model loads, and in compute."""
    con = sqlite3.connect(ws / "jobs.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM jobs ORDER BY id").fetchall()]
    timing = {}
    for job_id, record in con.execute("SELECT job_id, record FROM metrics ORDER BY id"):
        timing.update({job_id: json.loads(record)["timing"]} if "timing" in record else {})
    con.close()
    out = []
    for r in rows:
        if not (r.get("started") and r.get("finished") and r["finished"] >= since):
            continue
        t = timing.get(r["id"], {})
        out.append(
            {
                "step": r["step"],
                "from_s": round(r["started"] - since, 1),  # since the run began
                "seconds": round(r["finished"] - r["started"], 1),
                "before_step_s": round(t["step_started"] - r["started"], 2) if t else None,
                "model_load_s": round(t.get("model_load_s", 0.0), 2),
                "compute_s": round(t.get("compute_s", 0.0), 2),
            }
        )
    return out


def startup_tax(jobs: list[dict], wall: float) -> dict:
    """Where the run's wall time went that was not a stage's compute: its share, and the parts
    (worker start before the step; model loads, with the imports of transformers and
    bitsandbytes they trigger; the rest of each step outside its compute: other imports, skip
    checks, data and writes; and the time between jobs)."""
    compute = sum(j["compute_s"] for j in jobs)
    before = sum(j["before_step_s"] or 0.0 for j in jobs)
    loads = sum(j["model_load_s"] for j in jobs)
    in_jobs = sum(j["seconds"] for j in jobs)
    idle = wall - busy_seconds(jobs)  # no job running: the driver's own start, gaps, the end
    # over worker time, so jobs that overlap (Ray) are counted once each; for jobs one at a
    # time the denominator is the wall time
    return {
        "startup_share": round(1 - compute / (in_jobs + idle), 3),
        "compute_seconds": round(compute, 1),
        "tax_seconds": {
            "worker_start": round(before, 1),
            "model_loads": round(loads, 1),
            "rest_of_steps": round(in_jobs - before - loads - compute, 1),
            "no_job_running": round(idle, 1),
        },
    }


def busy_seconds(jobs: list[dict]) -> float:
    """Wall seconds during which at least one job ran (the union of their intervals)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted((j["from_s"], j["from_s"] + j["seconds"]) for j in jobs):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def run(config: Path, ws: Path, env: dict | None = None, args: list[str] = ()) -> dict:
    exe = str(Path(sys.executable).with_name("grouptune"))
    since = time.time()
    start = time.perf_counter()
    proc = subprocess.run(
        [exe, "run", str(config), "--workspace", str(ws), "--json", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    wall = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        raise SystemExit(f"grouptune run {config} failed:\n{proc.stderr[-3000:]}")
    jobs = job_times(ws, since)
    report = json.loads(proc.stdout)
    return {
        "wall_seconds": wall,
        **startup_tax(jobs, wall),
        "estimation_seconds": round(
            sum(j["seconds"] for j in jobs if j["step"].split(":")[0] in ESTIMATION), 1
        ),
        "jobs": jobs,
        "accuracy": {m: report["accuracy"][m] for m in ("zero_shot", "baseline", "ensemble")},
        "groups": report["groups"],
    }


def keep_earlier(rerun: set[str]) -> list[dict]:
    """The measurements of the last result file that this invocation does not redo, each with
    its command and machine, so that rerunning one path does not erase another's."""
    path = ROOT / "bench" / "results" / "e2e.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    kept = {k: v for k, v in old.get("runs", {}).items() if k not in rerun}
    entry = {key: old[key] for key in ("command", "machine", "speedup") if key in old}
    return ([{**entry, "runs": kept}] if kept else []) + list(old.get("earlier", []))


def startup_summary(results: dict) -> dict:
    paths = [k for k in ("cold", "fast", "chain", "ray") if k in results]
    if len(paths) < 2:
        return {}
    return {
        "startup": {
            k: {key: results[k][key] for key in ("wall_seconds", "startup_share", "tax_seconds")}
            for k in paths
        }
    }


def recount() -> None:
    """Derive the start-up figures again from the jobs databases of the runs in the result
    file (their workspaces under workspaces/bench-e2e), keeping each run's wall time."""
    path = ROOT / "bench" / "results" / "e2e.json"
    out = json.loads(path.read_text())
    for key, result in out["runs"].items():
        db = HERE / f"ws-{key.split()[0]}" / "jobs.db"
        if not db.exists() or "added" in key:
            continue
        con = sqlite3.connect(db)
        since = con.execute("SELECT min(created) FROM jobs").fetchone()[0]
        con.close()
        result["jobs"] = job_times(db.parent, since)
        result.update(startup_tax(result["jobs"], result["wall_seconds"]))
    out.update(startup_summary(out["runs"]))
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out.get("startup"), indent=2))


def main() -> None:
    from machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--paths", nargs="+", default=["fast", "plain"], choices=list(PATHS))
    ap.add_argument(
        "--no-added-task", action="store_true", help="skip the rerun with a seventh task"
    )
    ap.add_argument(
        "--tag", default="", help="suffix of the runs' names, e.g. 'before' to keep a baseline"
    )
    ap.add_argument(
        "--recount",
        action="store_true",
        help="recount the result file's runs from their workspaces' job databases (no runs)",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="rerun only --paths and keep the result file's other current runs beside them",
    )
    args = ap.parse_args()
    if args.recount:
        return recount()
    result_file = ROOT / "bench" / "results" / "e2e.json"
    old = json.loads(result_file.read_text()) if args.merge and result_file.exists() else {}
    for path in args.paths if args.merge else []:
        shutil.rmtree(HERE / f"ws-{path}", ignore_errors=True)
    if not args.merge:
        shutil.rmtree(HERE, ignore_errors=True)
    HERE.mkdir(parents=True, exist_ok=True)
    results = {}
    for path in args.paths:
        say(f"{path}: grouptune run (fresh workspace)")
        spec = PATHS[path]
        config = write_config(path, spec.get("config", {}))
        key = f"{path} {args.tag}".strip()
        results[key] = run(config, HERE / f"ws-{path}", spec.get("env"), spec.get("args", []))
        results[key]["command"] = "python bench/e2e.py " + " ".join(sys.argv[1:])
        say(
            f"{key}: {results[key]['wall_seconds']} s, startup_share {results[key]['startup_share']}"
        )
    if "fast" in results and not args.no_added_task:
        say("fast + rotten_tomatoes: grouptune run again with a seventh task")
        config = write_config("fast-plus", {}, extra_task="rotten_tomatoes")
        results["fast, one task added"] = run(config, HERE / "ws-fast")
    out = {
        "command": "python bench/e2e.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "runs": results,
    }
    if args.merge:  # the other current runs stay current; each run names its command
        out["runs"] = {**old.get("runs", {}), **results}
        results = out["runs"]
        out["command"] = old.get("command", out["command"])
        out["earlier"] = old.get("earlier", [])
    else:
        kept = keep_earlier(set(results))
        if kept:
            out["earlier"] = kept
    if {"fast", "plain"} <= set(results):
        f, p = results["fast"], results["plain"]
        out["speedup"] = {
            "total": round(p["wall_seconds"] / f["wall_seconds"], 2),
            "estimation": round(p["estimation_seconds"] / f["estimation_seconds"], 2),
        }
    if "fast" in results:  # every path must give the shipped path's report
        same = {
            k: (r["accuracy"], r["groups"])
            == (results["fast"]["accuracy"], results["fast"]["groups"])
            for k, r in results.items()
            if k != "fast" and "added" not in k
        }
        out["same_report_as_fast"] = same
    out.update(startup_summary(results))
    (ROOT / "bench" / "results" / "e2e.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
