"""How `grouptune` commands print their results for people (with --json they print the result itself)."""

from __future__ import annotations


def metrics_table(result: dict) -> str:
    lines = []
    for model, per_task in result.items():
        lines.append(f"{model}:")
        for task, m in per_task.items():
            lines.append(
                f"  {task:<16} acc {m['accuracy']:.3f}  f1 {m['f1']:.3f}  ece {m['ece']:.3f}"
            )
    return "\n".join(lines)


def matrix_text(names, T) -> str:
    head = " " * 16 + "".join(f"{n[:8]:>9}" for n in names)
    rows = [f"{a:<16}" + "".join(f"{v:9.2f}" for v in row) for a, row in zip(names, T, strict=True)]
    return "\n".join([head, *rows])


def group_view(entry: dict) -> dict:
    keys = ("m", "method", "groups", "predicted", "objective", "mean_accuracy", "mean_loss")
    out = {k: entry.get(k) for k in keys}
    for k in ("fallback", "reason"):
        if entry.get(k):
            out[k] = entry[k]
    return out


def report_text(report: dict) -> str:
    acc = report.get("accuracy") or {}
    lines = [f"{'task':<16}{'zero-shot':>10}{'baseline':>10}{'ensemble':>10}"]
    for task in [*report.get("tasks", []), "mean"]:
        vals = [(acc.get(k) or {}).get(task) for k in ("zero_shot", "baseline", "ensemble")]
        lines.append(
            f"{task:<16}" + "".join(f"{v:10.3f}" if v is not None else f"{'-':>10}" for v in vals)
        )
    if report.get("missing"):
        lines.append(f"missing: {report['missing']}")
    return "\n".join(lines)


def mix_text(result: dict) -> str:
    """Weights and the predicted change of each task's val loss and accuracy against uniform."""
    lines = [f"{'task':<18}{'weight':>8}{'Δ val loss':>12}{'Δ val acc':>11}"]
    for task in result["tasks"]:
        e = result["effect"][task]
        lines.append(
            f"{task:<18}{result['weights'][task]:>8.2f}{e['loss']:>+12.4f}{e['accuracy']:>+11.3f}"
        )
    m = result["effect"]["mean"]
    lines.append(f"{'mean':<18}{'':>8}{m['loss']:>+12.4f}{m['accuracy']:>+11.3f}")
    return "\n".join(lines)


def _interval(ci, spec: str) -> str:
    return "" if not ci else f"[{format(ci[0], spec)}, {format(ci[1], spec)}] "


def validation_text(result: dict) -> str:
    s, v = result["summary"], result["verdict"]

    def num(key, spec=".2f"):
        return "-" if s.get(key) is None else format(s[key], spec)

    lines = [
        f"{s['n_subsets']} subsets, {s['n_points']} (subset, task) points",
        f"mean relative val-loss error   {s['mean_loss_rel_error']:.1%}",
        f"mean abs val-accuracy error    {s['mean_accuracy_abs_error']:.3f}",
        f"predicted vs real loss corr.   {num('loss_correlation')}",
        f"against the mean of {s.get('seeds')} training seeds ({s.get('pairs')} same-task pairs):",
        f"  same-task order agreement    {num('order_agreement_vs_mean', '.0%')} "
        f"{_interval(s.get('order_agreement_vs_mean_ci'), '.0%')}"
        f"(one seed vs the others: {num('ceiling_order_agreement_loo', '.0%')})",
        f"  within-task loss corr.       {num('within_task_corr_loss_vs_mean')} "
        f"{_interval(s.get('within_task_corr_loss_vs_mean_ci'), '.2f')}"
        f"(one seed vs the others: {num('ceiling_corr_loss_loo')})",
        f"  seed-matched replay (each seed's own batch order): order agreement "
        f"{num('order_agreement_seed_matched', '.0%')}",
        f"largest relative weight change {s['max_weight_change']:.3%}",
        f"largest relative change of A   {s['max_a_change']:.2%}",
        "linear regime: " + ("looks fine" if v["linear_regime"] else "looks broken"),
        *[f"  - {r}" for r in v["reasons"]],
        "ranking against real fine-tunes: "
        + {True: "as good as one fine-tune", False: "below one fine-tune", None: "not judged"}[
            v.get("ranking_ok")
        ],
        *([f"  - {v['ranking_reason']}"] if v.get("ranking_reason") else []),
    ]
    return "\n".join(lines)
