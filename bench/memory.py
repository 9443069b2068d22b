"""Benchmark: peak resident memory of every pipeline step on the full sample config.

Each step runs as its own `grouptune` process (as the background jobs run them), started by a
fresh wrapper so that the peak (ru_maxrss of the waited child) belongs to that step alone.

The config is sample_data/full.yaml (10 tasks, 128-token prompts, all 30 layers adapted,
4-bit base, batch 16 for features / 8 for training) with two cuts that bound the time but not
the memory: rows per split capped (--rows; peaks depend on batch shapes and the model, the
feature stores are memory-mapped) and training capped at --steps optimizer steps.

Writes bench/results/memory.json.

    .venv/bin/python bench/memory.py [--rows 48] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

WRAPPER = (
    "import resource, subprocess, sys;"
    "rc = subprocess.run(sys.argv[1:]).returncode;"
    "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
)
STEPS = {
    "gradients (10 tasks)": ["gradients"],
    "affinity (60 subsets)": ["affinity"],
    "group (SDP + sweep)": ["group"],
    "zero-shot evaluation": ["evaluate", "--zero-shot"],
    "train baseline (10 tasks)": ["train", "--adapter", "baseline"],
    "train group-0": ["train", "--adapter", "group-0"],
}


def write_config(args, folder: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "sample_data" / "full.yaml").read_text())
    cfg["name"] = "bench-memory"
    cfg["data"].update(max_train=args.rows, max_val=args.rows, max_test=args.rows)
    cfg["data"]["root"] = str(ROOT / "sample_data" / "tasks")
    cfg["training"].update(epochs=1, max_steps_per_epoch=args.steps)
    path = folder / "config.in.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def peak_of(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in GiB, seconds) of one command."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True, check=False
    )
    marks = [line.split() for line in out.stdout.splitlines() if line.startswith("PEAK ")]
    if not marks or marks[-1][2] != "0":
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    kib = marks[-1][1]
    return round(int(kib) / 2**20, 3), round(time.perf_counter() - start, 1)


def main() -> None:
    from machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=48, help="rows per split and task")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per training")
    args = ap.parse_args()
    folder = ROOT / "workspaces" / "bench-memory"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = write_config(args, folder)
    exe = str(Path(sys.executable).with_name("grouptune"))
    rows = []
    for label, step in STEPS.items():
        gib, seconds = peak_of([exe, *step, "--config", str(config), "--workspace", str(folder)])
        rows.append({"step": label, "peak_rss_gib": gib, "seconds": seconds})
        print(f"{label:28s} {gib:6.2f} GiB  {seconds:6.1f} s", file=sys.stderr, flush=True)
    out = {
        "command": "python bench/memory.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "config": "sample_data/full.yaml with rows and training steps capped (see doc)",
        "rows_per_split": args.rows,
        "train_steps": args.steps,
        "steps": rows,
        "max_peak_rss_gib": max(r["peak_rss_gib"] for r in rows),
        "target_gib": 4.0,
    }
    (ROOT / "bench" / "results" / "memory.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
