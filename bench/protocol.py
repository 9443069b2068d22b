"""Benchmark: where grouping pays, in the paper's protocol (sample_data/protocol.yaml).

Two parts, each resumable (every adapter is kept in the workspace and reused on rerun) and
saved after every run with what it covers:

  pairs     The paper's negative-transfer measurement: every task of --pair-tasks fine-tuned
            alone and with each other one, with every seed of --pair-seeds. Transfer of j onto
            i = (i's val loss alone) − (i's val loss trained with j), mean over seeds (> 0:
            j helps i). A pair is negative when either task loses; "beyond noise" when the
            loss is larger than twice the seeds' standard error of that difference. Beside it,
            the estimated transfer matrix (the product's estimator: the replay averaged over
            batch orders, on the pair and on the task alone): correlation and sign agreement.
  headline  The ensemble against one QLoRA adapter (bench/claims_ensemble.py's runs: group
            adapters, fitted weights, boosting, test evaluation; paired training seeds): the
            recommended m and m = 1, 2, 3, n, and a RANDOM grouping with the recommended m's
            group sizes as the control, with paired-bootstrap intervals and FLOP ratios.

    .venv/bin/python bench/protocol.py --part pairs [--pair-tasks a b c] [--pair-seeds 0 1]
    .venv/bin/python bench/protocol.py --part headline [--seeds 0 1 2] [--tasks a b c]
    .venv/bin/python bench/protocol.py --smoke          # the tests' tiny experiment, a minute
    .venv/bin/python bench/protocol.py --summarize      # the summary again from the file's runs

Budget caps (--max-train, --max-val, --max-test, --epochs, --patience) are recorded in the
JSON: the paper trains 450 rows a task for 10 epochs; on 2 CPU cores the parts run with caps.
Writes bench/results/protocol.json (parts merged: a part not run is kept from the file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

os.environ.setdefault("GROUPTUNE_PROGRESS", "0")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DEFAULT_PAIR_TASKS = ["yelp_positive", "amazon_unhappy", "critic_negative", "plot_fact",
                      "email_legitimate"]  # fmt: skip


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_config(args):
    from core.config import load_config

    if args.smoke:
        from tests.conftest import write_tiny_experiment

        cfg = load_config(write_tiny_experiment(args.smoke_dir, adapter={"top_layers": 1}))
        args.pair_tasks = cfg.task_names
        return cfg
    cfg = load_config(args.config)
    if args.tasks:  # a subset of the config's tasks (the headline on the pairs' five, say)
        cfg = cfg.model_copy(update={"tasks": [t for t in cfg.tasks if t.name in args.tasks]})
    data = {"max_train": args.max_train, "max_val": args.max_val, "max_test": args.max_test}
    training = {"epochs": args.epochs, "patience": args.patience}
    return cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={k: v for k, v in data.items() if v}),
            "training": cfg.training.model_copy(update=training),
        }
    )


# --- part "pairs" ---------------------------------------------------------------------------


def fine_tune(cfg, ws, tasks: list[str], seed: int) -> dict:
    """The kept epoch's per-task val metrics of one fine-tune (trained, or reused)."""
    from core.train.trainer import train_adapter
    from core.validate.subsets import adapter_name, seeded

    name = f"{adapter_name(tasks)}-s{seed}"
    start = time.perf_counter()
    record = train_adapter(seeded(cfg, seed), ws, name, list(tasks), progress=False)
    say(f"pairs: {'+'.join(tasks)} seed {seed}: {time.perf_counter() - start:.0f} s")
    return {t: record["val_metrics"][t] for t in tasks}


def real_transfer(cfg, ws, tasks, seeds) -> dict:
    """{"alone": {task: {seed: metrics}}, "pairs": {"i+j": {seed: {task: metrics}}}}."""
    out = {"alone": {t: {} for t in tasks}, "pairs": {}}
    for seed in seeds:
        for t in tasks:
            out["alone"][t][seed] = fine_tune(cfg, ws, [t], seed)[t]
        for a, b in combinations(tasks, 2):
            out["pairs"].setdefault(f"{a}+{b}", {})[seed] = fine_tune(cfg, ws, [a, b], seed)
    return out


def transfer_matrix(real: dict, tasks, seeds, metric: str = "nll") -> dict:
    """T[i][j] = mean over seeds of (i alone − i with j) in val `metric` (loss: > 0 helps),
    with its standard error over seeds."""
    n = len(tasks)
    mean, se = np.zeros((n, n)), np.zeros((n, n))
    for (i, a), (j, b) in combinations(enumerate(tasks), 2):
        pair = real["pairs"][f"{a}+{b}"]
        for x, y, task in ((i, j, a), (j, i, b)):
            sign = 1 if metric == "nll" else -1  # accuracy: with − alone
            d = [sign * (real["alone"][task][s][metric] - pair[s][task][metric]) for s in seeds]
            mean[x, y] = np.mean(d)
            se[x, y] = np.std(d, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.nan
    return {"mean": mean.tolist(), "se": se.tolist()}


def estimated_matrix(cfg, ws, tasks) -> list[list[float]]:
    """The same from the product's estimator (its predicted val loss alone and with j)."""
    from core.estimate.estimator import score
    from core.estimate.fitter import fitter
    from core.gradients.store import load_features

    fit = fitter(cfg)
    feats = {t: load_features(ws, t) for t in tasks}
    alone = {t: score(feats[t], fit([feats[t]]))["loss"] for t in tasks}
    n = len(tasks)
    est = np.zeros((n, n))
    for (i, a), (j, b) in combinations(enumerate(tasks), 2):
        both = fit([feats[a], feats[b]])
        est[i, j] = alone[a] - score(feats[a], both)["loss"]
        est[j, i] = alone[b] - score(feats[b], both)["loss"]
    return est.tolist()


def negative_pairs(mean, se, tasks) -> dict:
    """Pairs where a task loses (its transfer < 0), and those beyond twice its standard error."""
    n = len(tasks)
    m, s = np.asarray(mean), np.asarray(se)
    neg, firm = [], []
    for i, j in combinations(range(n), 2):
        losses = [(x, y) for x, y in ((i, j), (j, i)) if m[x, y] < 0]
        if losses:
            neg.append(f"{tasks[i]}+{tasks[j]}")
        if any(np.isfinite(s[x, y]) and -m[x, y] > 2 * s[x, y] for x, y in losses):
            firm.append(f"{tasks[i]}+{tasks[j]}")
    return {"pairs": n * (n - 1) // 2, "negative": neg, "beyond_noise": firm}


def agreement(est, real) -> dict:
    """Correlation and sign agreement of estimated vs real transfer, off the diagonal."""
    e, r = np.asarray(est), np.asarray(real)
    mask = ~np.eye(len(e), dtype=bool)
    x, y = e[mask], r[mask]
    corr = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else None
    return {"correlation": corr, "sign_agreement": float(np.mean(np.sign(x) == np.sign(y)))}


def part_pairs(cfg, ws, args) -> dict:
    from core.pipeline import gradients

    tasks, seeds = list(args.pair_tasks), list(args.pair_seeds)
    sub = cfg.model_copy(update={"tasks": [t for t in cfg.tasks if t.name in tasks]})
    gradients(sub, ws, tasks)
    real = real_transfer(sub, ws, tasks, seeds)
    loss = transfer_matrix(real, tasks, seeds, "nll")
    acc = transfer_matrix(real, tasks, seeds, "accuracy")
    est = estimated_matrix(sub, ws, tasks)
    return {
        "tasks": tasks,
        "seeds": seeds,
        "real_loss_transfer": loss,
        "real_accuracy_transfer": acc,
        "estimated_loss_transfer": est,
        "negative_pairs": negative_pairs(loss["mean"], loss["se"], tasks),
        "negative_pairs_accuracy": negative_pairs(acc["mean"], acc["se"], tasks),
        "estimate_vs_real": agreement(est, loss["mean"]),
        "real": real,
    }


# --- part "headline" ------------------------------------------------------------------------


def random_grouping(groups: list[list[str]], seed: int = 0) -> list[list[str]]:
    """The control (core.grouping.random_control): the tasks dealt at random into groups of the
    recommended grouping's sizes, so that only the affinity's choice of members differs."""
    from core.grouping.partition import labels_to_groups
    from core.grouping.random_control import RandomGrouping

    names = sorted(t for g in groups for t in g)
    sizes = [len(g) for g in groups]
    est = RandomGrouping(len(groups), random_state=seed, sizes=sizes)
    return labels_to_groups(est.fit(np.zeros((len(names), len(names)))).labels_, names)


def part_headline(cfg, ws, args, save) -> dict:
    from claims_ensemble import feature_flops, one_run, result
    from claims_parts import choose_ms

    from core.pipeline import affinity, gradients
    from core.train.evaluation import evaluate_zero_shot

    gradients(cfg, ws)
    affinity(cfg, ws)
    n = len(cfg.task_names)
    rec_m, groups, rec = choose_ms(cfg, ws)
    groups = {**groups, n: [[t] for t in cfg.task_names]}
    control, first = f"random{rec_m}-per-seed", f"random{rec_m}"
    # the control: a random grouping of the recommended sizes drawn afresh for every training
    # seed (random_state = seed), so that it stands for random groupings, not for one draw;
    # beside it the first draw at every seed (the control of the first runs)
    groups[control] = {str(s): random_grouping(groups[rec_m], s) for s in args.seeds}
    groups[first] = random_grouping(groups[rec_m])
    # the recommended m and its controls first: the comparison the issue asks for comes soonest
    controls = [control, first] if rec_m > 1 else []
    ms = list(dict.fromkeys([rec_m, *controls, 1, 2, 3, n]))
    plan = [(s, m) for m in ms for s in args.seeds]
    feats = feature_flops(cfg, ws)
    zero = evaluate_zero_shot(cfg, ws)
    kept, runs = kept_runs(args.previous, cfg), []
    for seed, m in plan:
        want = groups[m].get(str(seed)) if isinstance(groups[m], dict) else groups[m]
        run = _same_run(list(kept.values()) + runs, seed, want)
        if run is None:
            run = one_run(cfg, ws, seed, m, want, feats)
        else:
            say(f"headline: seed {seed}, m = {m} kept (s{run['seed']} m{run['m']}, same groups)")
            run = {**run, "m": m}
        runs.append(run)
        save(headline(result(cfg, rec, rec_m, groups, plan, runs, zero), control))
    return headline(result(cfg, rec, rec_m, groups, plan, runs, zero), control)


def _same_run(done: list[dict], seed: int, groups: list[list[str]]) -> dict | None:
    """A finished run of this training seed with these very groups (whatever m it was run
    as): a run is its seed and groups, so it is reused, never trained twice."""
    key = sorted(sorted(g) for g in groups)
    return next(
        (r for r in done if r["seed"] == seed and sorted(sorted(g) for g in r["groups"]) == key),
        None,
    )


def kept_runs(previous: tuple[dict, dict] | None, cfg) -> dict:
    """(seed, str(m)) -> run, from the results file when its headline was made with this very
    config: a bench that spans sessions keeps its finished runs though the workspace's adapters
    are gone (each run's per-row answers are in the file, all the summary needs)."""
    part, provenance = (x or {} for x in previous or (None, None))
    if provenance.get("config") != cfg.model_dump(mode="json", exclude={"base_dir"}):
        return {}
    samples = part.get("samples") or {}
    return {
        (r["seed"], str(r["m"])): {**r, "correct": samples[f"s{r['seed']}-m{r['m']}"]}
        for r in part.get("runs") or []
        if f"s{r['seed']}-m{r['m']}" in samples
    }


def headline(res: dict, control: str) -> dict:
    """The JSON keys the issue names: the random control's gain beside the recommended m's,
    and the recommended grouping against the control directly; the same for the first draw."""
    first = control.removesuffix("-per-seed")
    for key, label in (("random", control), ("random_first", first)):
        by = res["by_m"].get(label) or {}
        res[f"{key}_gain"], res[f"{key}_gain_ci"] = by.get("mean_gain"), by.get("gain_ci")
        res[f"rec_vs_{key}"] = versus_control(res, res["recommended"]["m"], label)
    res["control"] = control
    return res


def versus_control(res: dict, rec_m, control: str) -> dict | None:
    """What the affinity's choice of members adds: the recommended grouping's test answers
    against the random grouping's of the same sizes, paired on the seeds both ran (points,
    paired-bootstrap interval), for the full ensemble and for the group adapters alone."""
    from core.stats import paired_gain, paired_sample

    samples = res["samples"]
    both = [s for s in (res["by_m"].get(control) or {}).get("seeds", [])
            if f"s{s}-m{rec_m}" in samples]  # fmt: skip
    if not both:
        return None
    out = {"seeds": both}
    for kind in samples[f"s{both[0]}-m{rec_m}"]:
        if kind == "baseline":
            continue
        pairs = [paired_sample(samples[f"s{s}-m{rec_m}"][kind], samples[f"s{s}-m{control}"][kind])
                 for s in both]  # fmt: skip
        g = paired_gain(pairs)
        out[kind] = {"points": g["points"], "ci": g["ci"], "per_task": g["per_task"]}
    return out


# --- driver ---------------------------------------------------------------------------------


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "sample_data" / "protocol.yaml")
    p.add_argument("--workspace", type=Path, default=ROOT / "workspaces" / "bench-protocol")
    p.add_argument("--part", choices=["pairs", "headline"], action="append")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        help="run on these of the config's tasks only (default: all)",
    )
    p.add_argument("--pair-tasks", nargs="+", default=DEFAULT_PAIR_TASKS)
    p.add_argument("--pair-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--pairs-name", default="pairs", choices=["pairs", "pairs_shipped"],
                   help="pairs_shipped: the same measurement on a shipped, distinct-answer "
                   "config (--config sample_data/full.yaml), kept beside the protocol's")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-val", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="default bench/results/protocol.json")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--summarize", action="store_true",
                   help="recompute the summary keys from the runs the results file holds")  # fmt: skip
    args = p.parse_args()
    args.part = args.part or ["pairs", "headline"]
    args.smoke_dir = Path(tempfile.mkdtemp(prefix="protocol-smoke-")) if args.smoke else None
    default_out = ROOT / "bench" / "results" / "protocol.json"
    if args.smoke:
        args.workspace = args.smoke_dir / "ws"
        default_out = args.smoke_dir / "protocol.json"
        args.seeds, args.pair_seeds, args.epochs = [0, 1], [0, 1], 1
    args.out = args.out or default_out
    return args


def main() -> None:
    from machine import machine_info

    from core.workspace import Workspace

    args = parse_args()
    res = json.loads(args.out.read_text()) if args.out.exists() else {"parts": {}}
    res.setdefault("parts", {})
    res.setdefault("provenance", {})
    if args.summarize:  # what is derived from the runs the file holds, again; no training
        part = res["parts"]["headline"]
        res["parts"]["headline"] = headline(part, part["control"])
        res.update(summary(res["parts"]))
        return write(args.out, res)
    cfg = make_config(args)
    ws = Workspace(args.workspace).ensure()
    ws.save_config(cfg)
    args.previous = (res["parts"].get("headline"), res["provenance"].get("headline"))

    def save(name, part):
        res["parts"][name] = part
        res["provenance"][name] = {
            "command": "python bench/protocol.py " + " ".join(sys.argv[1:]),
            "config": cfg.model_dump(mode="json", exclude={"base_dir"}),
            "machine": machine_info(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        res.update(summary(res["parts"]))
        write(args.out, res)

    if "pairs" in args.part:
        save(args.pairs_name, part_pairs(cfg, ws, args))
    if "headline" in args.part:
        save("headline", part_headline(cfg, ws, args, lambda d: save("headline", d)))
    say(f"wrote {args.out}")


def write(out: Path, res: dict) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=float) + "\n")
    os.replace(tmp, out)


def summary(parts: dict) -> dict:
    """The top-level keys of the result (the issue's names), from whatever parts exist."""
    h, p = parts.get("headline") or {}, parts.get("pairs") or {}
    rec = (h.get("recommended") or {}).get("m")
    return {
        "recommended": rec,
        "mean_gain": h.get("mean_gain"),
        "gain_ci": h.get("gain_ci"),
        "random_gain": h.get("random_gain"),
        "rec_vs_random": ((h.get("rec_vs_random") or {}).get("ensemble") or {}).get("points"),
        "flops_ratio_paper": h.get("flops_ratio_paper"),
        "flops_ratio_full": h.get("flops_ratio_full"),
        "negative_pairs": len((p.get("negative_pairs") or {}).get("negative", [])) if p else None,
        "pairs_measured": (p.get("negative_pairs") or {}).get("pairs") if p else None,
        "complete": bool(h.get("complete")) and bool(p),
    }


if __name__ == "__main__":
    main()
