"""Benchmark: do the suggested mixing weights beat uniform for real? (core.estimate.mixing)

For each preset: the gradient features, then the estimate's suggested weights for the single
adapter on every task (`grouptune mix --suggest`: the mean predicted val loss minimised, no
task protected), then that adapter trained with uniform and with the suggested weights, paired
over training seeds (the same seed for both: batch order and dropout). Reported per preset:
  predicted   the estimate's change of each task's val loss and accuracy (weighted − uniform)
  measured    the same from the real fine-tunes' kept epochs, mean over seeds (and per seed)
  mean_gain   test accuracy, weighted − uniform, in points, with its paired-bootstrap interval
              over seeds and test rows (core.stats.paired_gain): `gain_ci`
Every adapter and evaluation is kept in the workspace, so a rerun continues; the JSON is
written after every preset with what it covers.

    .venv/bin/python bench/mixing.py [--presets quick protocol] [--seeds 0 1 2]
    .venv/bin/python bench/mixing.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GROUPTUNE_PROGRESS", "0")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PRESETS = {
    "quick": "quick_distinct.yaml",
    "protocol": "protocol.yaml",
}  # quick: the distinct-answer demo


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def preset_config(name: str, args):
    from core.config import load_config

    if args.smoke:
        from tests.conftest import write_tiny_experiment

        return load_config(write_tiny_experiment(args.smoke_dir / name, adapter={"top_layers": 1}))
    cfg = load_config(ROOT / "sample_data" / PRESETS[name])
    caps = {k: v for k, v in (("max_train", args.max_train), ("max_test", args.max_test)) if v}
    if name == "protocol" and caps:  # the paper's protocol is hours per adapter on 2 cores
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=caps)})
    return cfg


def train_and_test(cfg, ws, variant: str, seed: int) -> tuple[dict, dict]:
    """(kept-epoch val metrics, eval document on test) of the single adapter, in its own run
    workspace beside the preset's shared features and prefix cache."""
    from claims_ensemble import run_workspace

    from core.ensemble.combine import evaluate_baseline
    from core.train.trainer import train_adapter
    from core.validate.subsets import seeded

    rws = run_workspace(ws, f"s{seed}-{variant}")
    scfg = seeded(cfg, seed)
    start = time.perf_counter()
    record = train_adapter(scfg, rws, "baseline", list(cfg.task_names), progress=False)
    doc = rws.read("eval", "baseline.json")
    if doc is None or "correct" not in doc:
        evaluate_baseline(scfg, rws)
        doc = rws.read("eval", "baseline.json")
    say(f"{variant} seed {seed}: {time.perf_counter() - start:.0f} s")
    return record["val_metrics"], doc


def mean_accuracy(correct: dict) -> float:
    """Mean over tasks of the test accuracy, from eval/*.json "correct"."""
    return float(np.mean([np.mean(rows) for rows in correct.values()]))


def run_preset(name: str, args) -> dict:
    from core import pipeline
    from core.stats import paired_gain, paired_sample
    from core.workspace import Workspace

    cfg = preset_config(name, args)
    ws = Workspace(args.workspace / name).ensure()
    ws.save_config(cfg)
    say(f"{name}: features")
    pipeline.gradients(cfg, ws)
    suggestion = pipeline.mix(cfg, ws, None, objective="loss", protect=False)
    weights = suggestion["weights"]
    say(f"{name}: suggested weights {weights}")
    mixed = cfg.model_copy(update={"training": cfg.training.model_copy(update={"mix": weights})})
    measured, samples, accuracy = {}, [], {"uniform": {}, "weighted": {}}
    for seed in args.seeds:
        uni_val, uni_doc = train_and_test(cfg, ws, "uniform", seed)
        mix_val, mix_doc = train_and_test(mixed, ws, "weighted", seed)
        measured[seed] = {
            t: {k: mix_val[t][m] - uni_val[t][m] for k, m in (("loss", "nll"), ("accuracy", "accuracy"))}
            for t in cfg.task_names
        }  # fmt: skip
        samples.append(paired_sample(mix_doc["correct"], uni_doc["correct"]))
        for variant, doc in (("uniform", uni_doc), ("weighted", mix_doc)):
            accuracy[variant][str(seed)] = mean_accuracy(doc["correct"])
    gain = paired_gain(samples)
    mean = {
        t: {k: float(np.mean([measured[s][t][k] for s in args.seeds])) for k in ("loss", "accuracy")}
        for t in cfg.task_names
    }  # fmt: skip
    pred = {t: suggestion["effect"][t] for t in cfg.task_names}
    return {
        "tasks": cfg.task_names,
        "weights": weights,
        "predicted_change": pred,
        "measured_change": mean,
        "measured_change_per_seed": {str(s): v for s, v in measured.items()},
        "sign_agreement_loss": float(
            np.mean([np.sign(pred[t]["loss"]) == np.sign(mean[t]["loss"]) for t in pred])
        ),
        "seeds": list(args.seeds),
        # the noise floor beside the gain: each variant's mean test accuracy per seed
        "test_accuracy_per_seed": accuracy,
        "mean_gain": gain["points"],
        "gain_ci": gain["ci"],
        "per_task_gain": gain["per_task"],
        "config": cfg.model_dump(mode="json", exclude={"base_dir"}),
    }


def main() -> None:
    from machine import machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-train", type=int, default=None, help="protocol: rows a task (budget)")
    p.add_argument("--max-test", type=int, default=None, help="protocol: test rows a task")
    p.add_argument("--workspace", type=Path, default=None, help="default workspaces/bench-mixing")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/mixing.json")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    args.smoke_dir = Path(tempfile.mkdtemp(prefix="mixing-smoke-")) if args.smoke else None
    out = args.out or (args.smoke_dir / "mixing.json" if args.smoke else ROOT / "bench" / "results" / "mixing.json")  # fmt: skip
    if args.smoke:
        args.presets, args.seeds = ["quick"], [0, 1]
    home = args.smoke_dir / "ws" if args.smoke else ROOT / "workspaces" / "bench-mixing"
    args.workspace = args.workspace or home
    res = json.loads(out.read_text()) if out.exists() else {}
    res.setdefault("presets", {})
    for name in args.presets:
        res["presets"][name] = run_preset(name, args)
        res["presets"][name]["command"] = "python bench/mixing.py " + " ".join(sys.argv[1:])
        res.update(command="python bench/mixing.py " + " ".join(sys.argv[1:]),
                   machine=machine_info(), created=time.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
        out.write_text(json.dumps(res, indent=1, default=float) + "\n")
        say(f"{name}: gain {res['presets'][name]['mean_gain']:+.1f} points "
            f"{res['presets'][name]['gain_ci']}; wrote {out}")  # fmt: skip


if __name__ == "__main__":
    main()
