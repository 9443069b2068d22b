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
    # every seed of a subset before the next subset: a partial run covers whole subsets
    for tasks in subsets:
        for seed in seeds:
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
    """TaskFeatures with train_g (train_G) and val_G sketched by `proj` (from unprojected
    features)."""
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


def _rows(subsets, feats, fit_of, scorer) -> pd.DataFrame:
    """One row per (subset, task): the prediction of fit_of(features of the subset)."""
    rows = []
    for tasks in subsets:
        fs = [feats[t] for t in tasks]
        start = time.perf_counter()
        fit = fit_of(fs)
        seconds = time.perf_counter() - start
        for task, tf in zip(tasks, fs, strict=True):
            p = scorer(tf, fit)
            rows.append(
                {
                    "subset": "+".join(tasks),
                    "task": task,
                    "predicted_loss": p["loss"],
                    "predicted_accuracy": p["accuracy"],
                    "base_loss": p["base_loss"],
                    "norm": fit.norm,
                    "seconds": seconds,
                }
            )
    return pd.DataFrame(rows)


def replay_orders(feats, subsets, tcfg, orders: int) -> list:
    """Per subset, the single replays of the expected replay's first `orders` batch orders
    (core.estimate.replay.order_seeds): [FitResult per order] per subset, and the seconds."""
    from core.estimate.replay import order_seeds, replay

    out = []
    for tasks in subsets:
        fs = [feats[t] for t in tasks]
        start = time.perf_counter()
        fits = [replay(fs, tcfg.model_copy(update={"seed": s})) for s in order_seeds(tcfg, orders)]
        out.append((fits, (time.perf_counter() - start) / orders))
    return out


def averaged(subsets, feats, singles, r: int, mean_w: bool = False) -> pd.DataFrame:
    """The expected replay over the first r orders, from the stored single replays: the mean
    of their predictions (core.estimate.estimator.score), or with mean_w the prediction at
    their mean update."""
    from core.estimate.estimator import FitResult, predict, score

    rows = []
    for tasks, (fits, per_order) in zip(subsets, singles, strict=True):
        ws = [f.w for f in fits[:r]]
        fit = FitResult(w=np.mean(ws, axis=0), reg=0.0, norm=float(np.mean([f.norm for f in fits[:r]])),
                        converged=True, n_rows=fits[0].n_rows, members=() if mean_w else tuple(ws))  # fmt: skip
        for task in tasks:
            p = predict(feats[task], fit.w) if mean_w else score(feats[task], fit)
            rows.append(
                {
                    "subset": "+".join(tasks),
                    "task": task,
                    "predicted_loss": p["loss"],
                    "predicted_accuracy": p["accuracy"],
                    "base_loss": p["base_loss"],
                    "norm": fit.norm,
                    "seconds": per_order * r,
                }
            )
    return pd.DataFrame(rows)


def variants(cfg, feats, subsets, seeds, args) -> tuple[dict, dict]:
    """({name: predictions} of the estimates a grouping can use (no real seed's batch order),
    {name: {seed: predictions}} of the seed-specific replays: "replay-seed" (each seed's own
    order: seed-matched) and "replay-cross" (the next seed's order, scored on this one))."""
    from core.estimate.estimator import argmin_fitter, predict
    from core.estimate.replay import replay
    from core.gradients.projection import make_projector
    from core.validate.subsets import seeded

    def at_w(tf, fit):
        return predict(tf, fit.w)

    tc = {s: seeded(cfg, s).training for s in seeds}
    per_seed = {"replay-seed": {s: _rows(subsets, feats, lambda f, s=s: replay(f, tc[s]), at_w)
                                for s in seeds}}  # fmt: skip
    if len(seeds) > 1:
        nxt = {s: seeds[(i + 1) % len(seeds)] for i, s in enumerate(seeds)}
        per_seed["replay-cross"] = {s: per_seed["replay-seed"][nxt[s]] for s in seeds}
    out = {}
    rmax = max(args.orders)
    say(f"replay: {rmax} batch orders per subset")
    singles = replay_orders(feats, subsets, cfg.training, rmax)
    for r in args.orders:
        out[f"replay-R{r}"] = averaged(subsets, feats, singles, r)
    out[f"replay-R{rmax}-meanw"] = averaged(subsets, feats, singles, rmax, mean_w=True)
    for c in args.max_norms:
        out[f"argmin@{c:g}"] = _rows(subsets, feats, argmin_fitter(None, c), at_w)
    dims = next(iter(feats.values())).meta["resolved"]["dims"]
    for k in args.sketch_k:
        if k >= sum(dims):
            continue
        say(f"CountSketch k = {k}")
        proj = make_projector("countsketch", dims, k, cfg.features.seed)
        sk = {t: sketched(tf, proj) for t, tf in feats.items()}
        sk_singles = replay_orders(sk, subsets, cfg.training, rmax)
        for r in sorted({1, rmax}):
            out[f"replay-R{r}-cs{k}"] = averaged(subsets, sk, sk_singles, r)
        if k == 400:
            for c in (0.1, 1.0):
                out[f"argmin-cs400@{c:g}"] = _rows(subsets, sk, argmin_fitter(None, c), at_w)
    return out, per_seed


# --- the split and the scoring --------------------------------------------------------------


def split(names, subsets, seed: int = 0) -> dict:
    """Disjoint parts of the scored points. "selection" (half the tasks, every subset) chooses
    the defaults; "held_out" (the other tasks) only reports: no held-out point was looked at
    when choosing. "held_out_strict" also leaves out the subsets of even position (its pairs
    are fewer: the pairs of a task grow with the square of its subsets)."""
    order = [str(t) for t in np.random.default_rng(seed).permutation(list(names))]
    half = len(order) // 2
    keys = ["+".join(s) for s in subsets]
    return {
        "selection": {"tasks": sorted(order[:half]), "subsets": keys},
        "held_out": {"tasks": sorted(order[half:]), "subsets": keys},
        "held_out_strict": {"tasks": sorted(order[half:]), "subsets": keys[1::2]},
        "all": {"tasks": sorted(order), "subsets": keys},
    }


def _part(df: pd.DataFrame, part: dict) -> pd.DataFrame:
    return df[df["task"].isin(part["tasks"]) & df["subset"].isin(part["subsets"])]


def score(preds: dict, per_seed: dict, real: pd.DataFrame, parts: dict, n_boot: int) -> dict:
    """Per part: the leave-one-seed-out ceiling, every estimate against the mean of the real
    seeds (core.validate.agreement.fair_agreement), and the seed-specific replays against
    their own (or the next) seed."""
    from core.validate.agreement import fair_agreement, seed_matched, seeds_wide

    wide = seeds_wide(real)
    out = {}
    for pname, part in parts.items():
        w = _part(wide, part)
        res = {"ceiling": None, "variants": {}, "seed_specific": {}}
        for name, pred in preds.items():
            cols = pred[["subset", "task", "predicted_loss", "predicted_accuracy"]]
            fa = fair_agreement(w.merge(cols, on=["subset", "task"]), n_boot=n_boot)
            res["ceiling"] = {k: v for k, v in fa.items() if k.startswith("ceiling")}
            res["ceiling"].update(pairs=fa["pairs"], seeds=fa["seeds"], points=fa["points"])
            res["variants"][name] = {k: v for k, v in fa.items() if not k.startswith("ceiling")}
            res["variants"][name]["seconds_per_subset"] = float(
                pred.drop_duplicates("subset")["seconds"].mean()
            )
        for name, by_seed in per_seed.items():
            res["seed_specific"][name] = seed_matched(w, by_seed, n_boot=n_boot)
        out[pname] = res
    return out


CANDIDATE = ("replay-R", "argmin")  # estimates a grouping can use (not the seed-specific ones)
# One pair of ~100 moves an order agreement by ~1 point and its 95% interval is ~±12 points:
# agreements within TIE of the best are a tie, settled by the within-task loss correlation.
TIE = 0.02
CHOICE_RULE = (
    "on the selection part only: among the estimates whose order agreement against the seeds' "
    f"mean is within {TIE} of the best, the highest within-task loss correlation; R: the "
    f"smallest number of orders within {TIE} of the best R's agreement"
)


def choose(scored: dict) -> dict:
    """The default, chosen on the selection part only (CHOICE_RULE)."""

    def agreement(v):
        return v["order_agreement_vs_mean"] or 0

    sel = scored["selection"]["variants"]
    names = [n for n in sel if n.startswith(CANDIDATE)]
    top = max(agreement(sel[n]) for n in names)
    tied = [n for n in names if agreement(sel[n]) >= top - TIE]
    best = max(tied, key=lambda n: sel[n]["within_task_corr_loss_vs_mean"] or 0)
    plain = {int(n[8:]): sel[n] for n in sel if n.startswith("replay-R") and n[8:].isdigit()}
    top_r = max(agreement(v) for v in plain.values())
    orders = min(r for r, v in plain.items() if agreement(v) >= top_r - TIE)
    return {"variant": best, "orders": orders, "rule": CHOICE_RULE, "tied": tied}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "sample_data" / "full.yaml")
    p.add_argument("--workspace", type=Path, default=None)
    p.add_argument("--subsets", type=int, default=40)
    p.add_argument("--subset-size", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-train", type=int, default=100)
    p.add_argument("--max-val", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--top-layers", type=int, default=8)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--loss", default="choices", choices=["choices", "vocab"])
    p.add_argument("--train-a", action="store_true", help="plain LoRA (A trained too)")
    p.add_argument("--orders", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                   help="R values of the expected replay (batch orders averaged)")  # fmt: skip
    p.add_argument("--max-norms", type=float, nargs="*", default=[0.1, 0.3, 1.0, 3.0])
    p.add_argument("--sketch-k", type=int, nargs="*", default=[400, 4096])
    p.add_argument("--boot", type=int, default=500, help="bootstrap resamples per interval")
    p.add_argument("--real-only", action="store_true", help="only the fine-tunes")
    p.add_argument("--shard", default="0/1",
                   help="i/n: fine-tune every n-th subset from the i-th (n processes share a machine)")  # fmt: skip
    p.add_argument("--available", action="store_true",
                   help="score only the subsets whose fine-tunes are all there (a partial run)")  # fmt: skip
    p.add_argument("--tag", default=None, help="results name: bench/results/agreement-<tag>.json")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default by --tag)")
    p.add_argument("--smoke", action="store_true", help="tiny-llama experiment, seconds")
    args = p.parse_args()
    args.smoke_dir = Path(tempfile.mkdtemp(prefix="agreement-smoke-")) if args.smoke else None
    if args.smoke:
        args.workspace = args.workspace or args.smoke_dir / "ws"
        args.out = args.out or args.smoke_dir / "agreement.json"
        args.subsets, args.sketch_k, args.orders, args.boot = min(args.subsets, 6), [8], [1, 2], 50
    else:
        name = "agreement" + (f"-{args.tag}" if args.tag else "")
        args.workspace = args.workspace or ROOT / "workspaces" / f"bench-{name}"
        args.out = args.out or ROOT / "bench" / "results" / f"{name}.json"
    return args


def finished(ws, subsets, seeds) -> list:
    """The subsets whose fine-tunes with every seed are finished."""
    from core.validate.subsets import adapter_name

    def done(tasks, seed):
        return (ws.adapter_dir(f"{adapter_name(tasks)}-s{seed}") / "grouptune.json").exists()

    return [t for t in subsets if all(done(t, s) for s in seeds)]


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
    drawn = sample_subsets(names, args.subsets, size, seed=1)  # 1: not the affinity step's draw
    parts = split(names, drawn)  # by the draw, so a partial run keeps each subset's part
    subsets = drawn
    if args.available:
        subsets = finished(ws, drawn, args.seeds)
        say(f"scoring the {len(subsets)} subsets fine-tuned with every seed so far")
    if args.real_only:
        i, n = (int(x) for x in args.shard.split("/"))
        real_runs(cfg, ws, subsets[i::n], args.seeds)
        return
    real = real_runs(cfg, ws, subsets, args.seeds)
    feats = {t: load_features(ws, t) for t in names}
    preds, per_seed = variants(cfg, feats, subsets, args.seeds, args)
    scored = score(preds, per_seed, real, parts, args.boot)
    result = {
        "command": "python bench/agreement.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "config": cfg.model_dump(mode="json", exclude={"base_dir"}),
        "subsets": [list(s) for s in subsets],
        "requested_subsets": args.subsets,
        "seeds": args.seeds,
        "split": parts,
        "features_seconds": round(features_s, 1),
        "real_fine_tune_seconds": float(real["wall"].drop_duplicates().sum()),
        "scores": scored,
        "chosen": choose(scored),
        "real": real.to_dict(orient="records"),
        "predictions": {name: df.to_dict(orient="records") for name, df in preds.items()},
        "seed_predictions": {
            name: {str(s): df.to_dict(orient="records") for s, df in by_seed.items()}
            for name, by_seed in per_seed.items()
        },
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    show(result)
    say(f"wrote {args.out}")


def show(result: dict) -> None:
    for pname in ("selection", "held_out", "held_out_strict", "all"):
        part = result["scores"][pname]
        c = part["ceiling"]
        print(f"\n== {pname}: {c['pairs']} pairs, {c['points']} points, {c['seeds']} seeds")
        print(
            f"{'variant':26}{'order vs mean':>16}{'vs others':>12}{'corr loss':>12}{'s/subset':>10}"
        )
        print(f"{'(ceiling, LOO)':26}{_f(c['ceiling_order_agreement_loo']):>16}{'':>12}"
              f"{_f(c['ceiling_corr_loss_loo']):>12}")  # fmt: skip
        for name, v in part["variants"].items():
            print(f"{name:26}{_f(v['order_agreement_vs_mean']):>16}"
                  f"{_f(v['order_agreement_vs_others']):>12}"
                  f"{_f(v['within_task_corr_loss_vs_mean']):>12}{v['seconds_per_subset']:>10.3f}")  # fmt: skip
        for name, v in part["seed_specific"].items():
            print(f"{name + ' (own seed)':26}{_f(v['order_agreement_seed_matched']):>16}{'':>12}"
                  f"{_f(v['within_task_corr_loss_seed_matched']):>12}")  # fmt: skip
    print(f"\nchosen on the selection part: {result['chosen']}")


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    main()
