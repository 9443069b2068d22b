"""Time the SDP grouping (Clarabel, SCS at two tolerances, penalised) beside spectral.

Planted block affinity matrices (within-block 1, across -0.5, symmetric noise 0.1, tasks
shuffled) for n = 10, 30, 100 with m = 3, 5, 10; each repeat uses a new matrix (seed = repeat).
Times are wall-clock seconds of `fit` (cvxpy problem building + solve + rounding), so they are
what a user waits for; one untimed warm-up fit per config comes first.
Writes bench/results/sdp_timing.json and prints a table.

    .venv/bin/python bench/sdp_timing.py [--repeats 3] [--sizes 10:3 30:5 100:10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so the script runs from a checkout without installing it

from core.grouping.partition import SDPGrouping, SpectralGrouping, canonical_labels  # noqa: E402

# name -> estimator factory for the planted m; each names its solver, so a row is one solver
CONFIGS = {
    "sdp-clarabel": lambda m: SDPGrouping(m=m, solver="CLARABEL"),
    "sdp-scs-1e-5": lambda m: SDPGrouping(m=m, solver="SCS"),  # cvxpy's default for SCS
    "sdp-scs-1e-4": lambda m: SDPGrouping(
        m=m, solver="SCS", solver_options={"eps_abs": 1e-4, "eps_rel": 1e-4}
    ),
    "sdp-penalised": lambda m: SDPGrouping(penalty=0.0, solver="SCS"),  # m must fall out
    "spectral": lambda m: SpectralGrouping(m),
}


def planted(n: int, m: int, seed: int, noise: float = 0.1):
    """(n, n) block affinity with m near-equal blocks, and its canonical labels (n,)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % m
    rng.shuffle(labels)
    T = np.where(labels[:, None] == labels[None, :], 1.0, -0.5)
    E = rng.normal(0.0, noise, T.shape)
    T = T + (E + E.T) / 2
    np.fill_diagonal(T, 0.0)
    return T, canonical_labels(labels)


def time_one(config: str, n: int, m: int, seed: int) -> dict:
    T, truth = planted(n, m, seed)
    est = CONFIGS[config](m)
    with warnings.catch_warnings(record=True):  # a fallback is recorded below, not printed
        warnings.simplefilter("always")
        start, cpu_start = time.perf_counter(), time.process_time()
        est.fit(T)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,  # all threads; less sensitive than wall time to a busy machine
        "recovered": bool(np.array_equal(est.labels_, truth)),
        "objective": est.objective_,
        "sdp_value": getattr(est, "sdp_value_", None),
        "solver": getattr(est, "solver_", None),
        "status": getattr(est, "solver_status_", None),
        "fallback": getattr(est, "fallback_reason_", None),
    }


def machine_info() -> dict:
    versions = {}
    for pkg in ("numpy", "scipy", "scikit-learn", "cvxpy", "clarabel", "scs"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1_5_15": list(os.getloadavg()),  # > cpu_count: times are inflated
        "versions": versions,
    }


def summarise(runs: list[dict]) -> dict:
    secs = [r["seconds"] for r in runs]
    return {
        "median_s": float(np.median(secs)),
        "min_s": float(np.min(secs)),
        "max_s": float(np.max(secs)),
        "median_cpu_s": float(np.median([r["cpu_seconds"] for r in runs])),
        "recovered": f"{sum(r['recovered'] for r in runs)}/{len(runs)}",
        "solvers": sorted({str(r["solver"]) for r in runs}),
        "statuses": sorted({str(r["status"]) for r in runs}),
        "fallbacks": sorted({r["fallback"] for r in runs if r["fallback"]}),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["10:3", "30:5", "100:10"], help="n:m")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/sdp_timing.json")
    args = parser.parse_args(argv)

    for config in args.configs:  # untimed warm-up: first-call imports and caches
        time_one(config, 8, 2, seed=0)
    rows = []
    for size in args.sizes:
        n, m = (int(v) for v in size.split(":"))
        for config in args.configs:
            runs = [time_one(config, n, m, seed) for seed in range(args.repeats)]
            rows.append({"n": n, "m": m, "config": config, **summarise(runs), "runs": runs})
            r = rows[-1]
            print(
                f"n={n:<4} m={m:<3} {config:<13} median {r['median_s']:8.3f}s "
                f"[{r['min_s']:.3f}-{r['max_s']:.3f}]  cpu {r['median_cpu_s']:8.3f}s  "
                f"recovered {r['recovered']}  {','.join(r['statuses'])}",
                flush=True,
            )

    print(f"load average (1, 5, 15 min): {os.getloadavg()} on {os.cpu_count()} CPUs")
    result = {"machine": machine_info(), "repeats": args.repeats, "noise": 0.1, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)  # atomic: a reader never sees half a file
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
