"""Benchmark: `grouptune run sample_data/quick.yaml` end to end, fast path against plain path.

Runs the whole pipeline as the product runs it (background jobs, one at a time) twice, in
fresh workspaces, one after the other on the same machine:
  fast    sample_data/quick.yaml as shipped (top 8 layers, frozen-prefix cache on)
  plain   the same with adapter.cache_lower_layers: false (every pass through all 30 layers)
and then, in the fast workspace, once more with a seventh task added (rotten_tomatoes), which
must compute only that task's features and what depends on them.

Per run: total wall time, the estimation stage (gradients + affinity + group jobs), each job's
time from the job database, and the report's test accuracies (which must agree between the
two paths). Writes bench/results/e2e.json.

    .venv/bin/python bench/e2e.py [--paths fast plain] [--no-added-task]
"""

from __future__ import annotations

import argparse
import json
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


def write_config(name: str, cache: bool, extra_task: str | None = None) -> Path:
    cfg = yaml.safe_load((ROOT / "sample_data" / "quick.yaml").read_text())
    cfg["data"]["root"] = str(ROOT / "sample_data" / "tasks")
    cfg["adapter"]["cache_lower_layers"] = cache
    if extra_task:
        cfg["tasks"].append(extra_task)
    path = HERE / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def job_times(ws: Path, since: float) -> list[dict]:
    """Each job finished after `since`: step and seconds it ran."""
    con = sqlite3.connect(ws / "jobs.db")
    con.row_factory = sqlite3.Row
    rows = con.execute("SELECT * FROM jobs ORDER BY id").fetchall()
    con.close()
    out = []
    for r in rows:
        r = dict(r)
        if r.get("started") and r.get("finished") and r["finished"] >= since:
            out.append({"step": r["step"], "seconds": round(r["finished"] - r["started"], 1)})
    return out


def run(config: Path, ws: Path) -> dict:
    exe = str(Path(sys.executable).with_name("grouptune"))
    since = time.time()
    start = time.perf_counter()
    proc = subprocess.run(
        [exe, "run", str(config), "--workspace", str(ws), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        raise SystemExit(f"grouptune run {config} failed:\n{proc.stderr[-3000:]}")
    jobs = job_times(ws, since)
    report = json.loads(proc.stdout)
    return {
        "wall_seconds": wall,
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


def main() -> None:
    from machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--paths", nargs="+", default=["fast", "plain"], choices=["fast", "plain"])
    ap.add_argument(
        "--no-added-task", action="store_true", help="skip the rerun with a seventh task"
    )
    args = ap.parse_args()
    shutil.rmtree(HERE, ignore_errors=True)
    HERE.mkdir(parents=True)
    results = {}
    for path in args.paths:
        say(f"{path}: grouptune run (fresh workspace)")
        config = write_config(path, cache=path == "fast")
        results[path] = run(config, HERE / f"ws-{path}")
        say(f"{path}: {results[path]['wall_seconds']} s")
    if "fast" in results and not args.no_added_task:
        say("fast + rotten_tomatoes: grouptune run again with a seventh task")
        config = write_config("fast-plus", cache=True, extra_task="rotten_tomatoes")
        results["fast, one task added"] = run(config, HERE / "ws-fast")
    out = {
        "command": "python bench/e2e.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "runs": results,
    }
    kept = keep_earlier(set(results))
    if kept:
        out["earlier"] = kept
    if {"fast", "plain"} <= set(results):
        f, p = results["fast"], results["plain"]
        out["speedup"] = {
            "total": round(p["wall_seconds"] / f["wall_seconds"], 2),
            "estimation": round(p["estimation_seconds"] / f["estimation_seconds"], 2),
        }
        out["same_accuracy"] = f["accuracy"] == p["accuracy"]
    (ROOT / "bench" / "results" / "e2e.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
