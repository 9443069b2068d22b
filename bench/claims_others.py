"""The sections of bench/RESULTS.md that other benches' result files fill (agreement, the paper's protocol, sensitivity, fast path, features, memory, end to end)."""

from __future__ import annotations

import json

import numpy as np
from claims_common import ROOT, fmt, load_result, table
from claims_verdicts import holds

OTHER = {
    "fastpath": lambda d: (
        "CPU fast path: "
        + ", ".join(
            f"{p} {v['seconds']['total']} s"
            + (f" ({v['speedup_vs_reference']['total']}x)" if "speedup_vs_reference" in v else "")
            for p, v in d["paths"].items()
        )
        + f" for features + train + zero-shot + retrain on "
        f"{', '.join(d['tasks'])}"
    ),
    "approximation": lambda d: (
        "first-order error of h against real forwards on SmolLM2 ("
        + ", ".join(d["settings"]["quantizations"])
        + "): suggested estimator.max_norm "
        f"{d['recommendation'].get('suggested_max_norm')}; real fine-tune weight change "
        + ", ".join(
            f"{q} {d['recommendation'][q]['finetune_rel_weight_change']:.2%}"
            for q in d["settings"]["quantizations"]
        )
    ),
    "features": lambda d: (
        f"gradient-feature extraction vs a training step (goal "
        f"{d['goal']}, met: {d['goal_met']}): "
        + ", ".join(f"{k} {v['all']['extract_over_train_step']}x" for k, v in d["results"].items())
    ),
    "sdp_timing": lambda d: (
        "SDP grouping time: "
        + ", ".join(
            f"n={r['n']} m={r['m']} {r['config']} {r['median_s']:.3g} s"
            for r in d["rows"]
            if r["config"] in ("sdp-clarabel", "spectral")
        )
    ),
    "memory": lambda d: (
        f"peak RSS per pipeline step on the full config (rows capped at {d['rows_per_split']}): "
        + ", ".join(f"{r['step']} {r['peak_rss_gib']} GiB" for r in d["steps"])
    ),
    "e2e": lambda d: (
        "grouptune run sample_data/quick_distinct.yaml: "
        + ", ".join(f"{k} {v['wall_seconds']} s" for k, v in d["runs"].items())
        + (f"; fast path {d['speedup']['total']}x" if "speedup" in d else "")
    ),
    "quantized_load": lambda d: (
        f"one 4-bit SmolLM2 load: quantising {d['median_seconds']['off']} s, from the quantised "
        f"cache {d['median_seconds']['on']} s ({d['speedup']}x)"
    ),
    "zero_shot_full": lambda d: (
        "zero-shot SmolLM2 on the full sample tasks' test splits: mean "
        f"accuracy {d['zero_shot']['mean']['accuracy']:.3f} over "
        f"{len(d['zero_shot']) - 1} tasks"
    ),
}


def md_agreement() -> list[str]:
    from agreement_markdown import markdown_lines

    return markdown_lines()


def md_paper_approximation() -> list[str]:
    """The first-order error under the paper's protocol and at real updates (approx_paper)."""
    r = load_result("approx_paper")
    if r is None:
        return []
    s = r["summary"]
    lines = [
        "## c'. First-order approximation, measured two ways (bench/approx_paper.py)",
        "",
        "On the recipe GroupTune trains (A frozen at the features' init), unprojected gradients, "
        f"train rows of {len(r['subsets'])} subsets of `{r['workspace']}`: `{r['command']}`.",
        "",
        "- Paper protocol (the reference's fast_estimate_eval_approximation.py: the estimated "
        "update rescaled to s·‖θ*_LoRA‖; RSE ÷ max(|h|, |h0|)² = mean over rows of "
        "(h0 + gᵀΔ − h)² / max(|h|, |h0|)², the reference script's denominator): "
        + ", ".join(f"s = {k}: {v:.3%}" for k, v in s["paper_protocol"].items()),
        "- At the real fine-tuned updates (‖ΔB‖ = "
        + ", ".join(f"{x:.2f}" for x in s["real_over_theta"])
        + " x ‖θ*_LoRA‖): the same RSE ÷ max(|h|, |h0|)² "
        f"{s['real_update_paper_error_train']:.3%}; relative error of the predicted change of h "
        f"{s['real_update_change_error_train']:.1%}",
        "",
    ]
    return lines


def md_sensitivity() -> list[str]:
    """The estimation error under other learning rates and trust regions (bench/sensitivity.py)."""
    path = ROOT / "bench" / "results" / "sensitivity.json"
    if not path.exists():
        return []
    sens = json.loads(path.read_text())
    lines = [
        "## a''. The previous estimator (argmin with a trust region): what moved its error "
        "(bench/sensitivity.py)",
        "",
        "Measured before the replay estimator and the A-frozen recipe became the defaults. "
        f"The same {sens['subsets']} subsets, re-estimated and (for another learning rate) "
        f"fine-tuned again: `{sens['command']}`.",
        "",
    ]
    head = ["setting", "loss rel. error", "acc. abs. error", "loss corr.", "predicted drop"]
    head += ["real drop", "max ‖ΔW‖/‖W‖", "max A change", "linear regime"]
    rows = []
    for v in sens["variants"]:
        s = v["summary"]
        rows.append(
            [v["label"], fmt(s["mean_loss_rel_error"], ".1%"), fmt(s["mean_accuracy_abs_error"])]
            + [fmt(s["loss_correlation"], ".2f"), fmt(s["mean_predicted_loss_drop"])]
            + [fmt(s["mean_real_loss_drop"]), fmt(s["max_weight_change"], ".2%")]
            + [fmt(s["max_a_change"], ".1%"), holds(v["linear_regime"])]
        )
    return lines + table(head, rows) + [""]


def md_e2e(e2e: dict | None) -> list[str]:
    """bench/e2e.py's runs, the current and the earlier ones with their recipe."""
    if not e2e:
        return []
    lines = []
    earlier = e2e.get("earlier") or []
    runs = list(e2e["runs"].items())
    for old in earlier:
        runs += [(f"{k} ({old.get('recipe', 'earlier')})", v) for k, v in old["runs"].items()]
    rows = [
        [k, fmt(v["wall_seconds"], ".0f"), fmt(v["estimation_seconds"], ".0f")]
        + [fmt(v["accuracy"]["ensemble"]["mean"]), fmt(v["accuracy"]["baseline"]["mean"])]
        for k, v in runs
    ]
    lines += table(
        [
            "grouptune run quick_distinct.yaml",
            "wall s",
            "estimation s",
            "ensemble acc",
            "baseline acc",
        ],
        rows,
    )
    measured = [e2e, *earlier]
    with_speedup = next((m for m in measured if "speedup" in m), None)
    if with_speedup:
        speedup = with_speedup["speedup"]
        when = f" ({with_speedup['recipe']})" if "recipe" in with_speedup else ""
        lines += [
            "",
            f"Fast path over plain path{when}: {speedup['total']}x end to end, "
            f"{speedup['estimation']}x for the estimation stage. Target: the quick run under "
            "600 s on 2 CPU cores.",
        ]
    lines += [""] + md_startup(e2e)
    return lines


STARTUP_PATHS = {
    "cold": "one process per job, quantising in every job (as before the cache)",
    "fast": "one process per job, quantised-base cache (the default)",
    "chain": "jobs.reuse_workers: true",
    "ray": "--backend ray, a local instance (one CPU per job)",
}


def md_startup(e2e: dict) -> list[str]:
    """The start-up tax of each path of one bench/e2e.py invocation (issue 16)."""
    startup = e2e.get("startup")
    if not startup:
        return []
    head = ["path", "wall s", "startup share", "worker start s", "model loads s"]
    head += ["rest of steps s", "no job running s"]
    rows = [
        [
            f"{k}: {STARTUP_PATHS.get(k, k)}",
            fmt(v["wall_seconds"], ".0f"),
            f"{v['startup_share']:.1%}",
        ]
        + [fmt(x, ".1f") for x in v["tax_seconds"].values()]
        for k, v in startup.items()
    ]
    same = e2e.get("same_report_as_fast") or {}
    lines = ["Start-up tax: the share of worker time that is not a stage's compute (goal < 5%)."]
    lines += ["", *table(head, rows), ""]
    lines += [
        "Same report (accuracies, groups) as fast: "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items())
        + ". One run per path, one after the other"
        + "".join(
            f"; {k} rerun later by `{e2e['runs'][k]['command']}`"
            for k in startup
            if e2e["runs"][k].get("command")
        )
        + "."
    ]
    load = load_result("quantized_load")
    if load:
        med = load["median_seconds"]
        lines += [
            "",
            f"One SmolLM2 4-bit load, imports excluded (bench/quantized_load.py, median of "
            f"{len(load['load_seconds']['on'])} fresh processes each, alternating): quantising "
            f"{med['off']:.2f} s, from the quantised cache {med['on']:.2f} s "
            f"({load['speedup']}x).",
        ]
    return lines + [""]


def md_fastpath() -> list[str]:
    """The CPU fast path's targets (issue 8) from e2e.json, fastpath.json and memory.json."""
    e2e, fast, mem = load_result("e2e"), load_result("fastpath"), load_result("memory")
    if not (e2e or fast or mem):
        return []
    lines = ["## CPU fast path (bench/e2e.py, bench/fastpath.py, bench/memory.py)", ""]
    lines += md_e2e(e2e)
    if fast:
        keys = ["features", "train", "zero_shot", "retrain", "total"]
        head = [f"path ({' + '.join(fast['tasks'])})", *keys]
        rows = []
        for name, p in fast["paths"].items():
            sp = p.get("speedup_vs_reference", {})
            rows.append([name] + [f"{p['seconds'][k]} s ({sp.get(k, '-')}x)" for k in keys])
        lines += table(head, rows)
        lines += [
            "",
            "Agreement with the reference (worst task): "
            + "; ".join(
                f"{n}: g corr {p['agreement_with_reference']['g_corr']}, g rel. diff "
                f"{p['agreement_with_reference']['g_rel_diff']}"
                for n, p in fast["paths"].items()
                if "agreement_with_reference" in p
            )
            + ".",
            "",
            "What-if (predict a new partition): "
            + ", ".join(
                f"{w['tasks']} tasks ({w['features']}) {w['full_partition_ms']} ms, one move "
                f"{w['move_one_task_ms']} ms"
                for w in fast.get("whatif", [])
            )
            + ". Targets: < 100 ms for 10 tasks, < 1 s for 100.",
            "",
        ]
    if mem:
        lines += [
            f"Peak memory, full config: {mem['max_peak_rss_gib']} GiB at most (target "
            f"{mem['target_gib']} GiB): "
            + ", ".join(f"{r['step']} {r['peak_rss_gib']}" for r in mem["steps"])
            + ".",
            "",
        ]
    return lines


def other_results() -> list[str]:
    lines = []
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        if path.stem in (
            "claims",
            "sensitivity",
            "approx_paper",
            "protocol",
            "mixing",
            "sampled_features",
        ) or path.stem.startswith("agreement-"):  # sections of their own
            continue
        try:
            line = OTHER[path.stem](json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            line = f"(no summary line: {type(err).__name__} {err})"
        lines.append(f"- `bench/results/{path.name}`: {line}")
    return lines


def md_protocol() -> list[str]:
    """Where grouping pays, in the paper's protocol (bench/protocol.py), as far as it ran."""
    r = load_result("protocol")
    if r is None:
        return []
    lines = ["## e. The paper's protocol on GroupTune's data (bench/protocol.py)", ""]
    for name, where in (("pairs", "protocol.yaml (one yes/no answer space, both polarities)"),
                        ("pairs_shipped", "full.yaml (each task its own answer words)")):  # fmt: skip
        if r["parts"].get(name):
            lines += md_pairs(r["parts"][name], r["provenance"][name], where)
    h = r["parts"].get("headline")
    if h:
        lines += md_headline(r, h, r["provenance"]["headline"])
    return lines + md_sampled()


def _run_label(run: dict) -> str:
    m = str(run["m"])
    return f"s{run['seed']} {m if m.startswith('random') else 'm' + m}"


def _points(gain, ci) -> str:
    if gain is None:
        return "not run yet"
    return f"{gain:+.1f} points" + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "")


def md_sampled() -> list[str]:
    """Gradient features on a sample of the train rows (bench/sampled_features.py)."""
    r = load_result("sampled_features")
    if r is None:
        return []
    from sampled_features import flops_by_fraction

    fractions = sorted({v["fraction"] for v in r["by_fraction"].values()})
    flops = flops_by_fraction(load_result("protocol") or {"parts": {}}, fractions) or {}
    rows = [
        [
            f"{v['fraction']:g}",
            v["how"],
            v["draws"],
            f"{fmt(v['correlation'], '.2f')} {_range(v['correlation_range'], '.2f')}",
            f"{v['sign_agreement']:.0%} {_range(v['sign_agreement_range'], '.0%')}",
            x_flops(flops.get(f"{v['fraction']:g}")),
        ]
        for v in r["by_fraction"].values()
    ]
    return [
        "### Gradient features on a sample of each task's train rows (bench/sampled_features.py)",
        "",
        f"The estimated pairwise transfer matrix from features on a fraction f of each task's "
        f"{sorted(set(r['train_rows'].values()))} train rows, against the real one above (the "
        f"pairs part: {len(r['tasks'])} tasks, seeds {r['seeds']}): `{r['provenance']['command']}` "
        f"({r['provenance']['date']}). sample: the replay runs on the sampled rows only; "
        "stretched: each sampled row stands for 1/f rows (the sample repeated up to n). Mean "
        "over sampling draws, [min, max] beside it; training FLOPs the paper's way at the "
        "recommended m, with the features' train-row FLOPs scaled by f.",
        "",
        *table(["f", "how", "draws", "correlation", "sign agreement", "FLOPs (paper)"], rows),
        "",
    ]


def _range(r, spec: str) -> str:
    return f"[{format(r[0], spec)}, {format(r[1], spec)}]" if r else ""


def x_flops(ratio) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "(after the headline)"


def md_headline(r: dict, h: dict, prov: dict) -> list[str]:
    """The ensemble against one adapter on the protocol, with the random control, as far as
    it ran (bench/claims_markdown.py's tables)."""
    from claims_markdown import ensemble_tables

    data, t = prov["config"]["data"], prov["config"]["training"]
    tasks = [task["name"] for task in prov["config"]["tasks"]]
    covered = ", ".join(_run_label(c) for c in h["covered"])
    todo = [_run_label(c) for c in h["plan"] if c not in h["covered"]]
    return [
        f"Headline on {len(tasks)} protocol tasks ({', '.join(tasks)}), "
        f"{data.get('max_train') or 'all'} train rows a task, {t['epochs']} epochs (the best "
        f"val epoch kept), all test rows: `{prov['command']}` ({prov['date']}). Recommended "
        f"m = {r['recommended']} ({h['recommended']['reason']}): groups "
        f"{json.dumps(h['groups'][str(r['recommended'])])}; the control "
        f"`{h['control']}` deals the same tasks at random into groups of the same sizes, "
        f"{_draws(h)}.",
        "",
        f"- recommended grouping against one adapter: {_points(r['mean_gain'], h.get('gain_ci'))} "
        f"over seeds {h.get('seeds')}; the random grouping "
        f"{_points(r['random_gain'], h.get('random_gain_ci'))}; training FLOPs "
        f"{fmt(r['flops_ratio_paper'], '.2f')}x (paper's counting) / "
        f"{fmt(r['flops_ratio_full'], '.2f')}x (full)",
        *_versus_control(h),
        f"- covered: {covered or 'nothing yet'}; still to run: {', '.join(todo) or 'nothing'} "
        "(a rerun of the command keeps what is here and runs the rest)",
        "",
        *ensemble_tables(h),
    ]


def _draws(h: dict) -> str:
    """The control's groupings: a new draw per training seed, and the first draw."""
    control, first = h["control"], h["control"].removesuffix("-per-seed")
    drawn = h["groups"].get(control)
    if not isinstance(drawn, dict):  # a file from before the per-seed draws
        return json.dumps(drawn)
    seeds = "; ".join(f"seed {s}: {json.dumps(g)}" for s, g in drawn.items())
    return f"a new draw at every training seed ({seeds}); `{first}` is the first draw at every seed"


def _versus_control(h: dict) -> list[str]:
    """The recommended grouping against the random ones directly (paired on their seeds)."""
    kinds = {"ensemble": "the full ensemble", "fit": "the group adapters alone (fitted weights)",
             "own": "each task on its own group's adapter"}  # fmt: skip
    first = h["control"].removesuffix("-per-seed")
    lines = []
    for key, label in (("rec_vs_random", h["control"]), ("rec_vs_random_first", first)):
        v = h.get(key)
        if not v or (key != "rec_vs_random" and label == h["control"]):
            continue
        parts = [f"{kinds[k]} {_points(v[k]['points'], v[k]['ci'])}" for k in kinds if k in v]
        lines.append(f"- recommended grouping against `{label}`, paired on seeds {v['seeds']}: "
                     + "; ".join(parts))  # fmt: skip
    return lines


def md_pairs(p: dict, prov: dict, where: str) -> list[str]:
    """One pairwise-transfer part: the negative pairs, the estimate's agreement, the matrix."""
    data, t = prov["config"]["data"], prov["config"]["training"]
    neg, n = p["negative_pairs"], len(p["tasks"])
    lines = [
        f"Pairwise transfer on {n} tasks of sample_data/{where}, seeds {p['seeds']}, "
        f"{data.get('max_train') or 'all'} train rows a task, {t['epochs']} epochs "
        f"(patience {t['patience']}): `{prov['command']}` ({prov['date']}). Entry (row i, "
        "column j): task i's val loss alone minus with j, mean over seeds (> 0: j helps i); "
        "the estimate is the product's (the replay averaged over batch orders).",
        "",
        f"- negative pairs (a task loses): {len(neg['negative'])} of {neg['pairs']} "
        f"({', '.join(neg['negative']) or 'none'}); beyond twice the seeds' standard "
        f"error: {len(neg['beyond_noise'])} ({', '.join(neg['beyond_noise']) or 'none'})",
        f"- estimated against real transfer: correlation "
        f"{fmt(p['estimate_vs_real']['correlation'], '.2f')}, sign agreement "
        f"{fmt(p['estimate_vs_real']['sign_agreement'], '.0%')}",
        "",
    ]
    head = ["task i \\ with j", *p["tasks"]]
    real, est = p["real_loss_transfer"]["mean"], p["estimated_loss_transfer"]
    rows = [[a] + ["-" if i == j else f"{real[i][j]:+.3f} (est {est[i][j]:+.3f})"
                   for j in range(n)] for i, a in enumerate(p["tasks"])]  # fmt: skip
    return lines + table(head, rows) + [""]


def md_mixing() -> list[str]:
    """Suggested mixing weights against uniform, for real (bench/mixing.py)."""
    r = load_result("mixing")
    if r is None:
        return []
    lines = ["## f. Mixing weights before training (bench/mixing.py)", ""]
    for name, p in r["presets"].items():
        data, epochs = p["config"]["data"], p["config"]["training"]["epochs"]
        caps = f"{data.get('max_train') or 'all'} train / {data.get('max_test') or 'all'} test rows a task"
        lines += [f"`{p.get('command', r['command'])}` ({caps}, {epochs} epochs)", ""]
        acc = p.get("test_accuracy_per_seed", {})
        spread = (
            " (mean test accuracy over the seeds: uniform "
            + ", weighted ".join(
                f"{min(acc[v].values()):.3f}-{max(acc[v].values()):.3f}"
                for v in ("uniform", "weighted")
            )
            + ")"
            if acc
            else ""
        )
        pred = [p["predicted_change"][t]["loss"] for t in p["tasks"]]
        meas = [p["measured_change"][t]["loss"] for t in p["tasks"]]
        lines += [
            f"{name}: test accuracy weighted − uniform {p['mean_gain']:+.1f} points "
            f"{[round(x, 1) for x in p['gain_ci']]} over seeds {p['seeds']}{spread}; the sign "
            f"of the predicted vs measured val-loss change agrees on "
            f"{p['sign_agreement_loss']:.0%} of tasks (correlation "
            f"{np.corrcoef(pred, meas)[0, 1]:.2f}); mean val-loss change predicted "
            f"{np.mean(pred):+.4f}, measured {np.mean(meas):+.4f} (the objective the weights "
            "were chosen for).",
            "",
        ]
        rows = [[t, f"{p['weights'][t]:.2f}", f"{p['predicted_change'][t]['loss']:+.4f}",
                 f"{p['measured_change'][t]['loss']:+.4f}"] for t in p["tasks"]]  # fmt: skip
        lines += table(["task", "weight", "predicted Δ val loss", "measured Δ val loss"], rows)
        lines += [""]
    return lines


OTHER["demo_start"] = lambda d: (
    f"{d['what']}: {', '.join(f'{x:.1f}' for x in d['seconds'])} s (median {d['median_s']} s; "
    f"load average {d['load_average_1_5_15_min'][0]})"
)
OTHER["scaling"] = lambda d: (
    "replay seconds of a 3-task subset (300 rows a task), exact / CountSketch 4096: "
    + ", ".join(
        f"{x['shape']} (D={x['D']:,}) {x['identity_seconds']:.2f} / {x['sketch_seconds']:.2f} s"
        for x in d["results"]
        if x["rows_per_task"] == 300
    )
)
