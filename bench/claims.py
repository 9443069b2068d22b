"""Benchmark: the paper's headline claims measured on GroupTune, side by side in one run.

Config: sample_data/full.yaml (10 tasks) reduced for 2 CPU cores (row caps 100/50/150, at most
--epochs epochs with early stopping, the fast path as in quick.yaml: adapter.top_layers 8 with
the frozen-prefix cache, float32 compute on the 4-bit base; `--dtype bfloat16` is faster but
not exact). Part d on 5 seeds plus m = 2, 3, n on 3 took about 2.5 hours here, over several
sessions: it resumes, reusing every adapter it has.
Steps (the pipeline's own functions; every piece is saved in the workspace and skipped on rerun):

  features    core.pipeline.gradients + affinity (the estimator scores its sampled subsets)
  a. estimate  the first K subsets the estimator sampled, fine-tuned for real with the group
               adapters' recipe (core.validate.validation: pick_subsets, train_subset, compare, i.e.
               validate_estimate(jobs=False)): predicted vs real val loss and accuracy
  b. speed-up  cost of estimation (features stage + scoring the K subsets; the shared prefix
               cache build reported apart and added in a conservative variant) vs the real
               fine-tunes of (a), wall seconds and FLOPs
  c. approx    at each real fine-tuned update of (a), on its tasks' val rows: h0 (B = 0), the
               real h (a real forward), the first-order prediction h0 + g·vec(ΔB) with
               UNPROJECTED g (float32 compute), and the real h with B fine-tuned and A held at A0
  d. ensemble  the recommended m on every --seeds seed, and m = 2, 3 and n (one adapter per
               task) on the first --extra-seeds: group adapters, fitted weights and boosting,
               against one baseline adapter on all tasks with the same seed; paired-bootstrap
               gains over test rows and seeds, and training FLOPs both ways

The parts live in claims_parts.py (a-c) and claims_ensemble.py (d); the verdicts in
claims_verdicts.py; RESULTS.md in claims_markdown.py and claims_others.py.

Writes bench/results/claims.json and bench/RESULTS.md (generated from the JSON and the other
bench/results/*.json). Progress lines go to stderr.

    .venv/bin/python bench/claims.py [--parts d] [--epochs 5] [--workspace workspaces/bench-claims]
    .venv/bin/python bench/claims.py --smoke        # tiny-llama experiment, temp dir, seconds
    .venv/bin/python bench/claims.py --report-only  # RESULTS.md again from claims.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("GROUPTUNE_PROGRESS", "0")
# transformers' deprecation notices, once per model load, would bury the progress lines
warnings.filterwarnings("ignore", category=FutureWarning)

from claims_common import (  # noqa: E402
    PAPER,
    PAPER_VALUES,
    PART_NAMES,
    ROOT,
    make_config,
    read_json,
    say,
    settings,
    timed,
)
from claims_markdown import markdown  # noqa: E402
from claims_parts import (  # noqa: E402
    estimation_stage,
    part_approximation,
    part_ensemble,
    part_estimation,
    part_speedup,
)
from claims_verdicts import holds, verdicts  # noqa: E402


def git_head() -> str | None:
    import subprocess

    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True)
    return out.stdout.decode().strip() or None


def run_all(args, cfg, ws) -> dict:
    """Run the parts asked for (--parts); the others are kept from the existing JSON, each
    with the provenance (settings, commit) it was measured with."""
    from machine import machine_info

    started, seconds = time.time(), {}
    old = read_json(args.out) if set(args.parts) != set(PART_NAMES) else None
    res = {
        "command": " ".join([".venv/bin/python", "bench/claims.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "settings": settings(cfg, args, ws),
        "paper": PAPER,
        "paper_values": PAPER_VALUES,
        "parts": {},
        "provenance": {},
    }
    here = {"settings": res["settings"]["config"], "commit": git_head(), "date": time.ctime()}
    for key, name in PART_NAMES.items():
        if key not in args.parts:
            res["parts"][name] = old["parts"][name]
            res["provenance"][name] = old.get("provenance", {}).get(name) or {
                "settings": old["settings"]["config"],
                "note": "kept from a run made before provenance was recorded",
            }
        else:
            res["provenance"][name] = here
    seconds["features"] = estimation_stage(cfg, ws)
    if {"a", "b", "c"} & set(args.parts):
        (a, subsets), seconds["a"] = timed(lambda: part_estimation(cfg, ws, args.subsets))
        say(f"a. mean loss rel. error {a['summary']['mean_loss_rel_error']:.1%}")
        b, seconds["b"] = timed(lambda: part_speedup(cfg, ws, subsets))
        c, seconds["c"] = timed(lambda: part_approximation(cfg, ws, subsets, a))
        res["parts"].update(estimation=a, speedup=b, approximation=c)
    if "d" in args.parts:

        def save(d):  # a partial part d, written with what it covers
            res["parts"]["ensemble"] = d
            write_result(args, {**res, "wall_seconds": round(time.time() - started, 1)})

        d, seconds["d"] = timed(lambda: part_ensemble(cfg, ws, args, save))
        res["parts"]["ensemble"] = d
    res["seconds_this_run"] = seconds
    res["wall_seconds"] = round(time.time() - started, 1)
    res["verdicts"] = verdicts(res)
    return res


def write_result(args, res: dict) -> None:
    """claims.json, atomically (a partial result survives an interrupted run)."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, args.out)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "sample_data" / "full.yaml")
    p.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="default workspaces/bench-claims (--smoke: a temp dir)",
    )
    p.add_argument("--subsets", type=int, default=8, help="K estimated subsets fine-tuned")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4],
        help="paired training seeds of the recommended m",
    )
    p.add_argument(
        "--extra-seeds", type=int, default=3, help="the first N seeds also run m = 2, 3 and n"
    )
    p.add_argument(
        "--parts",
        nargs="+",
        choices=sorted(PART_NAMES),
        default=sorted(PART_NAMES),
        help="parts to run; the others are kept from --out",
    )
    p.add_argument("--max-train", type=int, default=100)
    p.add_argument("--max-val", type=int, default=50)
    p.add_argument("--max-test", type=int, default=150)
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--epochs", type=int, default=None, help="max epochs (default: the config's)")
    p.add_argument("--top-layers", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--smoke", action="store_true", help="tiny-llama experiment in a temp dir")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON (default bench/results/claims.json)"
    )
    p.add_argument("--markdown", type=Path, default=None, help="default bench/RESULTS.md")
    p.add_argument("--report-only", action="store_true", help="RESULTS.md from the JSON only")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="claims-smoke-")) if args.smoke else None
    args.smoke_dir = tmp
    args.workspace = args.workspace or (tmp / "ws" if tmp else ROOT / "workspaces" / "bench-claims")
    args.out = args.out or (tmp / "claims.json" if tmp else ROOT / "bench/results/claims.json")
    args.markdown = args.markdown or (
        args.out.parent / "RESULTS.md" if tmp else ROOT / "bench" / "RESULTS.md"
    )
    return args


def main() -> None:
    from core.workspace import Workspace

    args = parse_args()
    if not args.report_only:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        cfg = make_config(args)
        ws = Workspace(args.workspace).ensure()
        ws.save_config(cfg)
        write_result(args, run_all(args, cfg, ws))
    res = json.loads(args.out.read_text())
    res["verdicts"] = verdicts(res)  # from the parts, so --report-only follows this code
    res["out_name"] = os.path.relpath(args.out, ROOT) if ROOT in args.out.parents else args.out.name
    args.markdown.write_text(markdown(res))
    for v in res["verdicts"]:
        print(
            f"{v['claim']:20} paper: {v['paper']}\n{'':20} ours:  {v['grouptune']} "
            f"[{holds(v['holds'])}]"
        )
    print(f"wrote {args.out} and {args.markdown}")


if __name__ == "__main__":
    main()
