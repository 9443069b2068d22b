"""Part d of bench/claims.py: the ensemble against one QLoRA adapter, paired over training seeds.

For each (training seed, m) a run workspace `<ws>/runs/s<seed>-m<m>` shares the claims
workspace's gradient features and frozen-prefix cache and holds what the product
makes from the sweep's partition into m groups: the group adapters (core.ensemble.combine.train_groups),
the fitted ensemble weights and the boosting rounds (core.ensemble.boosting), and the test evaluation
(core.ensemble.combine.evaluate_ensemble). The baseline of a seed, one adapter on every task with the
same recipe and seed, lives in `<ws>/runs/s<seed>-baseline`. The seeds are paired: ensemble and
baseline of a seed share training.seed (batch order, dropout); adapter.seed stays fixed, since
the features' expansion point (the seeded A) depends on it.

Plan: the recommended m on every seed of --seeds, then m = 2, 3 and n (one adapter per task,
the upper reference) on the first --extra-seeds of them. Every adapter, round and evaluation is
kept, so a rerun continues where the last one stopped, and `save(partial)` is called after each
run with what is covered so far.

Gains are paired bootstraps over seeds and test rows (core.stats.paired_gain), in accuracy
points. FLOPs are counted two ways:
  paper  gradient features on the training rows + group adapters + boosting, over the baseline
         (the paper's Step 1 is one pass over the training data)
  full   every feature (train and val side, per-choice), the frozen-prefix cache, the
         estimator's scoring, the group adapters, the ensemble weights' val passes and boosting,
         over the baseline
"""

from __future__ import annotations

import sys
import time

import numpy as np


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_workspace(ws, name: str):
    """<ws>/runs/<name>, reading and writing the claims workspace's features and prefix cache."""
    from core.workspace import Workspace

    class RunWorkspace(Workspace):
        def path(self, *parts: str):
            if parts and parts[0] in SHARED:
                return ws.path(*parts)
            return super().path(*parts)

    return RunWorkspace(ws.path("runs", name)).ensure()


SHARED = ("features", "cache")


def train_baseline(cfg, ws, seed: int):
    from core.ensemble.combine import evaluate_baseline, task_hashes
    from core.train.eval_status import eval_status
    from core.train.trainer import train_adapter
    from core.validate.subsets import seeded

    scfg, bws = seeded(cfg, seed), run_workspace(ws, f"s{seed}-baseline")
    say(f"d. seed {seed}: baseline")
    record = train_adapter(scfg, bws, "baseline", list(cfg.task_names), progress=False)
    hashes = task_hashes(scfg)
    if eval_status(bws, scfg, "baseline", hashes) != "fresh":
        evaluate_baseline(scfg, bws, hashes)
    return bws, record


def train_ensemble(cfg, ws, seed: int, m: int, groups: list[list[str]], bws):
    """The group adapters, weights, boosting and test evaluation of one (seed, m)."""
    import shutil

    from core.ensemble import boosting
    from core.ensemble.combine import evaluate_ensemble, train_groups
    from core.validate.subsets import seeded

    scfg, rws = seeded(cfg, seed), run_workspace(ws, f"s{seed}-m{m}")
    twin = rws.adapter_dir("baseline")  # a one-group partition is the baseline: found as a twin
    if not twin.exists():
        shutil.copytree(
            bws.adapter_dir("baseline"), twin, ignore=shutil.ignore_patterns("checkpoint")
        )
    say(f"d. seed {seed}, m = {m}: group adapters {[len(g) for g in groups]}")
    train_groups(scfg, rws, groups, progress=False)
    say(f"d. seed {seed}, m = {m}: weights and {cfg.ensemble.boosting} boosting round(s)")
    boosting.boost(scfg, rws)
    evaluate_ensemble(scfg, rws)
    return rws


def one_run(cfg, ws, seed: int, m: int, groups, feats_flops: dict) -> dict:
    from core.accounting import Accounting
    from core.stats import paired_gain, paired_sample

    bws, base_rec = train_baseline(cfg, ws, seed)
    rws = train_ensemble(cfg, ws, seed, m, groups, bws)
    ens, base = rws.read("eval", "ensemble.json"), bws.read("eval", "baseline.json")
    acct, base_acct = Accounting(rws).read(), Accounting(bws).read()
    group = acct["group_training"]["flops"]
    boost = (acct.get("boosting") or {}).get("flops", 0)
    weights = (acct.get("ensemble_weights") or {}).get("flops", 0)
    baseline = base_acct["baseline_training"]["flops"]
    variants = {"ensemble": ens["correct"], **ens["by_weights_correct"]}
    gains = {k: paired_gain([paired_sample(c, base["correct"])]) for k, c in variants.items()}
    return {
        "seed": seed,
        "m": m,
        "groups": groups,
        "ensemble": ens["metrics"],
        "by_weights": ens["by_weights"],
        "baseline": base["metrics"],
        "gain_points": gains["ensemble"]["points"],
        "gain_points_by_weights": {k: g["points"] for k, g in gains.items()},
        "correct": {
            "ensemble": ens["correct"],
            "baseline": base["correct"],
            **ens["by_weights_correct"],
        },
        "weights_kind": ens["weights_kind"],
        "boosting": ens["boosting"],
        "forwards_per_example": ens["forwards_per_example"],
        "steps": _steps(rws, bws, groups),
        "flops": {
            "features_train": feats_flops["train"],
            "features_all": feats_flops["all"],
            "prefix_cache": feats_flops["prefix_cache"],
            "estimation": feats_flops["estimation"],
            "group_training": group,
            "ensemble_weights": weights,
            "boosting": boost,
            "baseline_training": baseline,
        },
        "flops_ratio_paper": (feats_flops["train"] + group + boost) / baseline,
        "flops_ratio_full": (
            feats_flops["all"]
            + feats_flops["prefix_cache"]
            + feats_flops["estimation"]
            + group
            + weights
            + boost
        )
        / baseline,
        "baseline_record": {k: base_rec.get(k) for k in ("epochs_run", "best_epoch", "steps")},
    }


def _steps(rws, bws, groups) -> dict:
    """Optimizer steps and epochs run of every adapter of a run (the early-stopping record)."""
    out = {}
    for ws, names in ((rws, [f"group-{i}" for i in range(len(groups))]), (bws, ["baseline"])):
        for name in names:
            rec = ws.read("adapters", name, "grouptune.json") or {}
            out[name] = {
                k: rec.get(k) for k in ("steps", "epochs_run", "best_epoch", "copied_from")
            }
    return out


def feature_flops(cfg, ws) -> dict:
    """The features stage's FLOPs, split into training rows and all, plus the shared prefix
    cache and the estimator, from the claims workspace's accounting. A workspace whose features
    were counted before the stage recorded the split gets it measured the stage's way."""
    from core.accounting import Accounting

    acct = Accounting(ws).read()
    parts = acct["gradients"].get("parts", {})
    if all("train_flops" in p for p in parts.values()):
        train, how = sum(p["train_flops"] for p in parts.values()), "recorded by the stage"
    else:  # measured once, then kept beside the accounting it completes
        split = ws.read("claims", "feature_split.json") or measure_split_flops(cfg, ws)
        ws.write(split, "claims", "feature_split.json")
        for task, p in parts.items():  # the same method must give back the recorded total
            total = split[task]["train"] + split[task]["val"]
            assert abs(total - p["flops"]) <= 1e-6 * p["flops"], (task, total, p["flops"])
        train = sum(v["train"] for v in split.values())
        how = "measured again the stage's way (it matches the recorded totals)"
    return {
        "train": int(train),
        "all": acct["gradients"]["flops"],
        "prefix_cache": _estimation_prefix(acct),
        "estimation": (acct.get("estimation") or {}).get("flops", 0),
        "train_split": how,
    }


def _estimation_prefix(acct: dict) -> int:
    """The frozen-prefix cache of the train and val rows (the features'); the test rows' is
    inference, the same for ensemble and baseline."""
    parts = (acct.get("prefix_cache") or {}).get("parts", {})
    return sum(p["flops"] for name, p in parts.items() if ".test." not in name)


def measure_split_flops(cfg, ws) -> dict:
    """{task: {"train", "val"}} features FLOPs as core.gradients.extract counts them: torch's flop
    counter on the first (shortest) batch of a split, per token, times the split's padded
    tokens in the same length-sorted batches."""
    from core.data.prompts import encode_split
    from core.data.sources import load_tasks
    from core.gradients.extract import load_extraction_model
    from core.gradients.per_example import batch_features
    from core.models import prefix
    from core.models.flops import count_call_flops

    say("d. measuring the train/val split of the features' FLOPs")
    model, tok, proj = load_extraction_model(cfg)
    prefix.attach(model, cfg, ws)
    bs, out = cfg.features.batch_size, {}
    for task in load_tasks(cfg):
        out[task.name] = {}
        for split in ("train", "val"):
            enc = encode_split(tok, task, split, cfg.data.max_tokens)
            order = np.argsort(enc.lengths, kind="stable")
            chunks = [order[i : i + bs] for i in range(0, len(order), bs)]
            batch = prefix.model_inputs(model, enc, chunks[0], tok.pad_token_id, "cpu")
            _, count = count_call_flops(
                model,
                lambda batch=batch, idx=chunks[0], enc=enc: batch_features(
                    model,
                    batch,
                    enc.choice_ids,
                    enc.gold[idx],
                    cfg.features.target,
                    enc.split,
                    proj,
                ),
                batch,
                backward=True,
            )
            tokens = sum(
                prefix.model_inputs(model, enc, c, tok.pad_token_id, "cpu")[
                    "attention_mask"
                ].numel()
                for c in chunks
            )
            out[task.name][split] = count.per_token * tokens
    return out


def summarize(runs: list[dict], m: int) -> dict:
    """Paired-bootstrap gain over the seeds run at m, per variant, and the mean FLOPs ratios."""
    from core.stats import paired_gain, paired_sample

    mine = [r for r in runs if r["m"] == m]
    out = {"m": m, "seeds": [r["seed"] for r in mine]}
    for kind in ("ensemble", *mine[0]["by_weights"]):
        samples = [paired_sample(r["correct"][kind], r["correct"]["baseline"]) for r in mine]
        g = paired_gain(samples)
        out[kind] = {"mean_gain": g["points"], "gain_ci": g["ci"], "per_task": g["per_task"]}
    out["mean_gain"], out["gain_ci"] = out["ensemble"]["mean_gain"], out["ensemble"]["gain_ci"]
    out["ensemble_accuracy"] = float(np.mean([r["ensemble"]["mean"]["accuracy"] for r in mine]))
    out["baseline_accuracy"] = float(np.mean([r["baseline"]["mean"]["accuracy"] for r in mine]))
    out["flops_ratio_paper"] = float(np.mean([r["flops_ratio_paper"] for r in mine]))
    out["flops_ratio_full"] = float(np.mean([r["flops_ratio_full"] for r in mine]))
    out["forwards_per_example"] = float(
        np.mean([r["forwards_per_example"]["ensemble"] for r in mine])
    )
    return out


def part_ensemble(cfg, ws, choose_ms, seeds, extra_seeds, save) -> dict:
    """Run the plan (module docstring), calling save(partial result) after every run."""
    from core.train.evaluation import evaluate_zero_shot

    n = len(cfg.task_names)
    rec_m, groups, rec = choose_ms(cfg, ws)
    extra = [m for m in dict.fromkeys([2, 3, n]) if m != rec_m]
    groups = {**groups, n: [[t] for t in cfg.task_names]}
    plan = [(s, rec_m) for s in seeds] + [(s, m) for m in extra for s in extra_seeds]
    feats = feature_flops(cfg, ws)
    zero = evaluate_zero_shot(cfg, ws)
    runs = []
    for seed, m in plan:
        runs.append(one_run(cfg, ws, seed, m, groups[m], feats))
        save(result(cfg, rec, rec_m, groups, plan, runs, zero))
    return result(cfg, rec, rec_m, groups, plan, runs, zero)


def result(cfg, rec, rec_m, groups, plan, runs, zero) -> dict:
    by_m = {str(m): summarize(runs, m) for m in dict.fromkeys(r["m"] for r in runs)}
    main = by_m.get(str(rec_m), {})
    return {
        "recommended": rec,
        "m_values": list(dict.fromkeys(m for _, m in plan)),
        "groups": {str(m): g for m, g in groups.items()},
        "plan": [{"seed": s, "m": m} for s, m in plan],
        "covered": [{"seed": r["seed"], "m": r["m"]} for r in runs],
        "complete": len(runs) == len(plan),
        "seeds": main.get("seeds", []),
        "mean_gain": main.get("mean_gain"),
        "gain_ci": main.get("gain_ci"),
        "flops_ratio_paper": main.get("flops_ratio_paper"),
        "flops_ratio_full": main.get("flops_ratio_full"),
        "by_m": by_m,
        "runs": [{k: v for k, v in r.items() if k != "correct"} for r in runs],
        "samples": {f"s{r['seed']}-m{r['m']}": r["correct"] for r in runs},
        "zero_shot": zero,
        "recipe": {
            "training": cfg.training.model_dump(mode="json"),
            "ensemble": cfg.ensemble.model_dump(mode="json"),
        },
        "note": "training.seed varies (shuffle order, dropout) and is shared by the ensemble "
        "and the baseline of a seed; adapter.seed is fixed because the features' expansion "
        "point (the seeded A) depends on it",
    }
