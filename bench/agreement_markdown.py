"""The agreement section of bench/RESULTS.md, from bench/results/agreement*.json (bench/claims.py
calls `markdown_lines`)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HEAD = ["variant", "order agreement vs the seeds' mean", "vs each seed's leave-out mean",
        "within-task corr. loss", "within-task corr. acc.", "s / subset"]  # fmt: skip
PARTS = {
    "held_out": "Held-out part (reports only)",
    "selection": "Selection part (chose the default)",
}


def _pct(v, ci=None) -> str:
    if v is None:
        return "-"
    return f"{v:.1%}" + (f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else "")


def _num(v, ci=None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _rows(part: dict, chosen: str) -> list[list[str]]:
    c = part["ceiling"]
    rows = [["(ceiling: one real seed vs the others' mean)",
             _pct(c["ceiling_order_agreement_loo"], c.get("ceiling_order_agreement_loo_ci")),
             "-", _num(c["ceiling_corr_loss_loo"], c.get("ceiling_corr_loss_loo_ci")),
             _num(c["ceiling_corr_accuracy_loo"]), "-"]]  # fmt: skip
    for name, v in part["variants"].items():
        label = f"**{name}** (chosen)" if name == chosen else name
        rows.append([label,
                     _pct(v["order_agreement_vs_mean"], v.get("order_agreement_vs_mean_ci")),
                     _pct(v["order_agreement_vs_others"]),
                     _num(v["within_task_corr_loss_vs_mean"], v.get("within_task_corr_loss_vs_mean_ci")),
                     _num(v["within_task_corr_accuracy_vs_mean"]),
                     f"{v['seconds_per_subset']:.3f}"])  # fmt: skip
    for name, v in part["seed_specific"].items():
        what = (
            "its own seed's run" if name == "replay-seed" else "the next seed's order, on this seed"
        )
        rows.append([f"{name} ({what}; not an estimate a grouping can use)",
                     _pct(v["order_agreement_seed_matched"], v.get("order_agreement_seed_matched_ci")),
                     "-", _num(v["within_task_corr_loss_seed_matched"]), "-", "-"])  # fmt: skip
    return rows


def markdown_lines() -> list[str]:
    """RESULTS.md's section on within-task agreement, from bench/results/agreement-*.json."""
    found = sorted((ROOT / "bench" / "results").glob("agreement-*.json"))
    if not found:
        return []
    lines = [
        "## a. Does the estimate predict the expected fine-tune? (bench/agreement.py)",
        "",
        "The affinity matrix z-scores each task's score across its subsets, and a grouping "
        "decides about adapters that will be trained once, with a seed no estimate was given. "
        "So an estimate is scored against the MEAN of several real training seeds: the share "
        "of same-task pairs of subsets it orders alike (50% = chance), and the correlation with "
        "each task's mean removed. The ceiling is one real fine-tune against the mean of the "
        'other seeds (leave one seed out); "vs each seed\'s leave-out mean" scores the '
        "estimate on exactly the ceiling's targets. The tasks are split in two: defaults are "
        "chosen on the selection tasks' points, and the held-out tasks only report (a stricter "
        "part also leaves out half the subsets). Brackets: 95% "
        "bootstrap intervals over subsets. The seed-matched replay (the batch order of the run "
        "it is scored on) is shown beside, never as the estimate.",
        "",
    ]
    for path in found:
        r = json.loads(path.read_text())
        if "scores" not in r:
            continue
        d, t = r["config"]["data"], r["config"]["training"]
        covered = len(r["subsets"])
        lines += [
            f"### `{path.name}`: {len(r['config']['tasks'])} tasks, {d['max_train']} train / "
            f"{d['max_val']} val rows, {covered} of {r.get('requested_subsets', covered)} subsets "
            f"x seeds {r['seeds']}",
            "",
            f"Recipe: {t['epochs']} epochs, lr {t['lr']}, batch {t['batch_size']}, loss "
            f"{t['loss']}, A frozen: {t['freeze_a']}, LoRA dropout "
            f"{r['config']['adapter']['dropout']}. Command: `{r['command']}`; real fine-tunes "
            f"{r['real_fine_tune_seconds']:.0f} s ({r['created']}). Chosen on the selection "
            f"part: **{r['chosen']['variant']}**, R = {r['chosen']['orders']} orders "
            f"({r['chosen']['rule']}).",
            "",
        ]
        for key, title in PARTS.items():
            part = r["scores"][key]
            c = part["ceiling"]
            lines += [f"{title}: tasks {', '.join(r['split'][key]['tasks'])}; {c['pairs']} "
                      f"same-task pairs, {c['points']} points.", ""]  # fmt: skip
            lines += ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
            lines += ["| " + " | ".join(row) + " |" for row in _rows(part, r["chosen"]["variant"])]
            lines += [""]
    return lines
