"""Benchmark: what the quantised-base cache saves on one model load (core.models.quantized).

Loads sample_data/quick_distinct.yaml's model (SmolLM2-135M, 4-bit) in fresh processes, alternating
with the cache off (GROUPTUNE_QUANTIZED_CACHE=0: bitsandbytes quantises while loading, as every
job did before the cache) and on (the cache folder filled first), `--repeats` times each, and
reports each process's load_model seconds, imports excluded (they are imported first). Writes
bench/results/quantized_load.json.

    .venv/bin/python bench/quantized_load.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

ONE_LOAD = """
import json, time
import bitsandbytes, peft, torch, transformers  # imports first: only the load is timed
from core.config import load_config
from core.models.loading import load_model
cfg = load_config("sample_data/quick_distinct.yaml")
start = time.perf_counter()
model, _ = load_model(cfg.model)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def load_seconds(cache: bool) -> float:
    env = {**os.environ, "GROUPTUNE_QUANTIZED_CACHE": "1" if cache else "0"}
    env["GROUPTUNE_PROGRESS"] = "0"
    out = subprocess.run(
        [sys.executable, "-c", ONE_LOAD],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    from machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    load_seconds(cache=True)  # fills the cache if it is empty
    runs = {"off": [], "on": []}
    for _ in range(args.repeats):  # alternating, so drift on the machine hits both alike
        runs["off"].append(round(load_seconds(cache=False), 3))
        runs["on"].append(round(load_seconds(cache=True), 3))
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {
        "command": "python bench/quantized_load.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "load_seconds": runs,
        "median_seconds": med,
        "speedup": round(med["off"] / med["on"], 2),
        "saved_seconds_per_load": round(med["off"] - med["on"], 2),
    }
    (ROOT / "bench" / "results" / "quantized_load.json").write_text(
        json.dumps(out, indent=2) + "\n"
    )
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
