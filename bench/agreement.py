"""Benchmark: does the estimate track real fine-tuning WITHIN each task? (issue: the estimator)

Given a config, it computes the features, draws N subsets so that every task appears about
equally often, fine-tunes each subset for real with every training seed (the product's own
`core.train.trainer.train_adapter`, adapter `subset-<hash>-s<seed>`), and scores several estimator
variants on the same fine-tunes (core.validate.agreement): within-task correlation of predicted vs real
val loss and accuracy, same-task pairwise order agreement, error of the predicted loss drop,
the paper's relative error, and the estimated-vs-real affinity correlation. The noise ceiling
is the same figures between two real seeds. Real fine-tunes are the expensive part: each is
saved in the workspace and reused on rerun (and by every variant), so the bench resumes.

Variants (all on the same stored, unprojected features; sketches are applied on the fly):
  replay            the recipe replayed with AdamW on the linearised model (core.estimate.replay), the
                    seed of the fine-tune it predicts
  replay-cross      the same, with the OTHER seed's batch order (how much comes from the order)
  replay-cs<k>      the replay on CountSketch(k) features (Adam through a sketch)
  argmin@<c>        the paper's fit (core.estimate.estimator, trust region ‖w‖ ≤ c) on the same features
  argmin-cs400@<c>  the previous default: CountSketch k = 400, ‖w‖ ≤ c

    .venv/bin/python bench/agreement.py [--config sample_data/full.yaml] [--subsets 16]
    .venv/bin/python bench/agreement.py --smoke     # tiny-llama, temp dir, seconds
Writes bench/results/agreement.json (and a copy per --tag).
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
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_config(args):
    """The config reduced by the CLI caps, with the recipe under test."""
    from core.config import load_config

    if args.smoke:
        from tests.conftest import write_tiny_experiment

        cfg = load_config(write_tiny_experiment(args.smoke_dir, adapter={"top_layers": 1}))
    else:
        cfg = load_config(args.config)
        caps = {"max_train": args.max_train, "max_val": args.max_val}
        cfg = cfg.model_copy(
            update={
                "data": cfg.data.model_copy(update={**caps, "max_tokens": args.max_tokens}),
                "adapter": cfg.adapter.model_copy(
                    update={"top_layers": args.top_layers, "dropout": args.dropout}
                ),
                "model": cfg.model.model_copy(update={"dtype": "float32"}),
            }
        )
    t = {"epochs": args.epochs, "freeze_a": not args.train_a, "loss": args.loss}
    return cfg.model_copy(
        update={
            "features": cfg.features.model_copy(update={"projection": "identity"}),
            "training": cfg.training.model_copy(update=t),
        }
    )


# --- real fine-tunes ------------------------------------------------------------------------


def kept_epoch(ws, name: str) -> dict:
    """Per-task val metrics of the epoch the current rule keeps (core.recipe.is_better), from
    the adapter's metrics.jsonl: the trajectory does not depend on the rule, so fine-tunes made
    under another selection rule are scored without training them again."""
    from core.recipe import is_better

    best = None
    for line in (ws.adapter_dir(name) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "val":
            mean = {"accuracy": r["mean_accuracy"], "nll": r["mean_nll"]}
            if is_better(mean, best and best["mean"]):
                best = {"mean": mean, **r["val"]}
    return best


def real_runs(cfg, ws, subsets, seeds) -> pd.DataFrame:
    """One row per (seed, subset, task): the kept epoch's val loss and accuracy. A subset is
    fine-tuned (or resumed) unless its adapter folder already holds a finished run."""
    from core.train.trainer import train_adapter
    from core.validate.subsets import adapter_name, seeded

    rows, total, done = [], len(subsets) * len(seeds), 0
    for seed in seeds:
        for tasks in subsets:
            done += 1
            name = f"{adapter_name(tasks)}-s{seed}"
            start = time.perf_counter()
            if not (ws.adapter_dir(name) / "grouptune.json").exists():
                train_adapter(seeded(cfg, seed), ws, name, list(tasks), progress=False)
            rec = json.loads((ws.adapter_dir(name) / "grouptune.json").read_text())
            seconds = time.perf_counter() - start
            say(f"real {done}/{total} seed {seed} {'+'.join(tasks)}: {seconds:.0f} s")
            kept = kept_epoch(ws, name)
            for task in tasks:
                rows.append(
                    {
                        "seed": seed,
                        "subset": "+".join(tasks),
                        "task": task,
                        "loss": kept[task]["nll"],
                        "accuracy": kept[task]["accuracy"],
                        "wall": (rec.get("accounting") or {}).get("wall_seconds"),
                    }
                )
    return pd.DataFrame(rows)


# --- estimator variants ---------------------------------------------------------------------


def sketched(tf, proj):
    """TaskFeatures with train_g and val_G sketched by `proj` (from unprojected features)."""
    import dataclasses

    import torch

    def each(arr):  # (..., D) -> (..., k)
        arr = np.asarray(arr)
        flat = torch.as_tensor(arr.reshape(-1, arr.shape[-1]).copy())
        return proj.project(flat).numpy().reshape(*arr.shape[:-1], proj.k)

    per_choice = {} if tf.train_G is None else {"train_G": each(tf.train_G)}
    return dataclasses.replace(
        tf, train_g=each(tf.train_g), val_G=each(tf.val_G), k=proj.k, **per_choice
    )


def predict_variant(kind: str, feats: dict, subsets, tcfg, param=None) -> pd.DataFrame:
    from core.estimate.estimator import fit_update, predict
    from core.estimate.replay import replay

    rows = []
    for tasks in subsets:
        fs = [feats[t] for t in tasks]
        fit = replay(fs, tcfg) if kind == "replay" else fit_update(fs, max_norm=param)
        for task, tf in zip(tasks, fs, strict=True):
            p = predict(tf, fit.w)
            rows.append(
                {
                    "subset": "+".join(tasks),
                    "task": task,
                    "predicted_loss": p["loss"],
                    "predicted_accuracy": p["accuracy"],
                    "base_loss": p["base_loss"],
                    "norm": fit.norm,
                }
            )
    return pd.DataFrame(rows)


def variants(cfg, feats, subsets, seeds, args) -> dict:
    """{name: {seed: predictions}} for every variant (replay is seed-specific)."""
    from core.gradients.projection import make_projector
    from core.validate.subsets import seeded

    out = {}
    tc = {s: seeded(cfg, s).training for s in seeds}
    out["replay"] = {s: predict_variant("replay", feats, subsets, tc[s]) for s in seeds}
    if len(seeds) > 1:
        cross = {s: seeds[(i + 1) % len(seeds)] for i, s in enumerate(seeds)}
        out["replay-cross"] = {
            s: predict_variant("replay", feats, subsets, tc[cross[s]]) for s in seeds
        }
    for c in args.max_norms:
        p = predict_variant("argmin", feats, subsets, None, c)
        out[f"argmin@{c:g}"] = dict.fromkeys(seeds, p)
    dims = next(iter(feats.values())).meta["resolved"]["dims"]
    for k in args.sketch_k:
        if k >= sum(dims):
            continue
        proj = make_projector("countsketch", dims, k, cfg.features.seed)
        sk = {t: sketched(tf, proj) for t, tf in feats.items()}
        out[f"replay-cs{k}"] = {s: predict_variant("replay", sk, subsets, tc[s]) for s in seeds}
        if k == 400:
            for c in (0.1, 1.0):
                p = predict_variant("argmin", sk, subsets, None, c)
                out[f"argmin-cs400@{c:g}"] = dict.fromkeys(seeds, p)
    return out


# --- scoring --------------------------------------------------------------------------------


def real_affinity_corr(pred: pd.DataFrame, real: pd.DataFrame, names) -> float | None:
    """Correlation of the affinity matrices built from predicted and from real losses, over
    the task pairs that share a subset (Grad-TAG's check)."""
    from core.estimate.affinity import affinity_matrix, cooccurrence
    from core.validate.agreement import MIN_POINTS

    p = pred.rename(columns={"predicted_loss": "loss"})
    r = real[["subset", "task", "loss"]]
    Tp, Tr = affinity_matrix(p, names, "loss"), affinity_matrix(r, names, "loss")
    mask = np.triu(cooccurrence(r, names) > 0, 1)
    x, y = Tp[mask], Tr[mask]
    if len(x) < MIN_POINTS or x.std() < 1e-12 or y.std() < 1e-12:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def intervals(df: pd.DataFrame, pred: str = "predicted") -> dict:
    """95% bootstrap intervals over subsets (core.validate.agreement.bootstrap_interval) of the order
    agreement and the within-task loss correlation; `df` may pool seeds (subset names carry
    the seed, so pairs never mix seeds)."""
    from core.validate.agreement import bootstrap_interval, order_agreement, within_task_corr

    pl = f"{pred}_loss"
    return {
        "order_agreement_ci": bootstrap_interval(
            df, lambda d: order_agreement(d, pl, "real_loss"), n_boot=500
        ),
        "within_task_corr_loss_ci": bootstrap_interval(
            df, lambda d: within_task_corr(d, pl, "real_loss"), n_boot=500
        ),
    }


def _pooled(frames: dict) -> pd.DataFrame:
    """Per-seed tables as one, each subset named with its seed: a resample draws the subset's
    rows of every seed together (the unit that was sampled is the subset)."""
    return pd.concat([f.assign(seed=s) for s, f in frames.items()], ignore_index=True)


def score(preds: dict, real: pd.DataFrame, seeds, names) -> dict:
    from core.validate.agreement import agreement, per_task

    def joined(pred, seed):
        r = real[real["seed"] == seed][["subset", "task", "loss", "accuracy"]]
        r = r.rename(columns={"loss": "real_loss", "accuracy": "real_accuracy"})
        return pred.merge(r, on=["subset", "task"])

    out = {}
    for name, by_seed in preds.items():
        per_seed = {s: agreement(joined(by_seed[s], s)) for s in seeds}
        pooled = _pooled({s: joined(by_seed[s], s) for s in seeds})
        pooled["task"] = pooled["task"] + "@" + pooled["seed"].astype(str)  # pairs within a seed
        keys = [k for k, v in per_seed[seeds[0]].items() if isinstance(v, float)]
        mean = {
            k: float(np.mean([per_seed[s][k] for s in seeds if per_seed[s][k] is not None]))
            for k in keys
            if any(per_seed[s][k] is not None for s in seeds)
        }
        real0 = real[real["seed"] == seeds[0]]
        out[name] = {
            "mean_over_seeds": mean,
            "per_seed": {str(s): v for s, v in per_seed.items()},
            "per_task": per_task(joined(by_seed[seeds[0]], seeds[0])),
            "affinity_corr": real_affinity_corr(by_seed[seeds[0]], real0, names),
            "mean_norm": float(by_seed[seeds[0]]["norm"].mean()),
            **intervals(pooled),
        }
    return out


def noise_ceiling(real: pd.DataFrame, seeds, base: pd.DataFrame) -> dict | None:
    """The noise ceiling: the same measures with seed a's real fine-tunes as the prediction of
    seed b's."""
    from core.validate.agreement import agreement

    if len(seeds) < 2:
        return None
    a, b = (real[real["seed"] == s][["subset", "task", "loss", "accuracy"]] for s in seeds[:2])
    df = a.merge(b, on=["subset", "task"], suffixes=("_a", "_b"))
    df = df.rename(
        columns={
            "loss_a": "predicted_loss",
            "accuracy_a": "predicted_accuracy",
            "loss_b": "real_loss",
            "accuracy_b": "real_accuracy",
        }
    )
    df = df.merge(base, on=["subset", "task"])
    return {**agreement(df), **intervals(df)}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "sample_data" / "full.yaml")
    p.add_argument("--workspace", type=Path, default=None)
    p.add_argument("--subsets", type=int, default=16)
    p.add_argument("--subset-size", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--max-train", type=int, default=100)
    p.add_argument("--max-val", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--top-layers", type=int, default=8)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--loss", default="choices", choices=["choices", "vocab"])
    p.add_argument("--train-a", action="store_true", help="plain LoRA (A trained too)")
    p.add_argument("--max-norms", type=float, nargs="*", default=[0.1, 0.3, 1.0, 3.0])
    p.add_argument("--sketch-k", type=int, nargs="*", default=[400, 4096])
    p.add_argument("--real-only", action="store_true", help="only the fine-tunes")
    p.add_argument("--tag", default=None, help="results name: bench/results/agreement-<tag>.json")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default by --tag)")
    p.add_argument("--smoke", action="store_true", help="tiny-llama experiment, seconds")
    args = p.parse_args()
    args.smoke_dir = Path(tempfile.mkdtemp(prefix="agreement-smoke-")) if args.smoke else None
    if args.smoke:
        args.workspace = args.workspace or args.smoke_dir / "ws"
        args.out = args.out or args.smoke_dir / "agreement.json"
        args.subsets, args.sketch_k = min(args.subsets, 3), [8]
    else:
        name = "agreement" + (f"-{args.tag}" if args.tag else "")
        args.workspace = args.workspace or ROOT / "workspaces" / f"bench-{name}"
        args.out = args.out or ROOT / "bench" / "results" / f"{name}.json"
    return args


def main() -> None:
    from bench.machine import machine_info
    from core.estimate.affinity import sample_subsets
    from core.gradients.store import load_features
    from core.pipeline import gradients
    from core.workspace import Workspace

    args = parse_args()
    cfg = make_config(args)
    ws = Workspace(args.workspace).ensure()
    ws.save_config(cfg)
    names = cfg.task_names
    start = time.perf_counter()
    say(f"features of {len(names)} tasks (identity projection; skipped when fresh)")
    gradients(cfg, ws)
    features_s = time.perf_counter() - start
    size = min(args.subset_size, len(names) - 1)
    subsets = sample_subsets(names, args.subsets, size, seed=1)  # 1: not the affinity step's draw
    real = real_runs(cfg, ws, subsets, args.seeds)
    if args.real_only:
        return
    feats = {t: load_features(ws, t) for t in names}
    preds = variants(cfg, feats, subsets, args.seeds, args)
    base = preds["replay"][args.seeds[0]][["subset", "task", "base_loss"]]
    result = {
        "command": "python bench/agreement.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "config": cfg.model_dump(mode="json", exclude={"base_dir"}),
        "subsets": [list(s) for s in subsets],
        "seeds": args.seeds,
        "features_seconds": round(features_s, 1),
        "real_fine_tune_seconds": float(real["wall"].drop_duplicates().sum()),
        "noise_ceiling": noise_ceiling(real, args.seeds, base),
        "variants": score(preds, real, args.seeds, names),
        "real": real.to_dict(orient="records"),
        "predictions": {
            name: {str(seed): df.to_dict(orient="records") for seed, df in by_seed.items()}
            for name, by_seed in preds.items()
        },
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    show(result)
    say(f"wrote {args.out}")


def show(result: dict) -> None:
    cols = ["order_agreement", "within_task_corr_loss", "within_task_corr_accuracy"]
    cols += ["drop_rel_error", "paper_rel_error"]
    ceiling = result["noise_ceiling"] or {}
    print(f"{'variant':20}" + "".join(f"{c[:22]:>24}" for c in cols) + f"{'affinity_corr':>16}")
    print(f"{'(noise ceiling)':20}" + "".join(f"{_f(ceiling.get(c)):>24}" for c in cols))
    for name, v in result["variants"].items():
        m = v["mean_over_seeds"]
        line = "".join(f"{_f(m.get(c)):>24}" for c in cols)
        print(f"{name:20}{line}{_f(v['affinity_corr']):>16}")


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    main()
