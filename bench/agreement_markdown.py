"""The agreement section of bench/RESULTS.md, from bench/results/agreement*.json (bench/claims.py
calls `markdown_lines`)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


HEAD = ["variant", "order agreement", "within-task corr. loss", "within-task corr. acc."]
HEAD += ["loss-drop error", "paper rel. error", "affinity corr."]


def _row(name: str, m: dict, affinity, cis: dict | None = None) -> list[str]:
    keys = ["order_agreement", "within_task_corr_loss", "within_task_corr_accuracy"]
    keys += ["drop_rel_error", "paper_rel_error"]
    pct = {"order_agreement", "drop_rel_error", "paper_rel_error"}
    cells = []
    for k in keys:
        v = m.get(k)
        cell = "-" if v is None else (f"{v:.1%}" if k in pct else f"{v:.2f}")
        ci = (cis or {}).get(f"{k}_ci")
        if v is not None and ci:
            cell += f" [{ci[0]:.0%}, {ci[1]:.0%}]" if k in pct else f" [{ci[0]:.2f}, {ci[1]:.2f}]"
        cells.append(cell)
    return [name, *cells, "-" if affinity is None else f"{affinity:.2f}"]


def markdown_lines() -> list[str]:
    """RESULTS.md's section on within-task agreement, from bench/results/agreement-*.json."""
    found = sorted((ROOT / "bench" / "results").glob("agreement-*.json"))
    if not found:
        return []
    lines = [
        "## a. Does the estimate track real fine-tuning within each task? (bench/agreement.py)",
        "",
        "The affinity matrix z-scores each task's score across its subsets, so what grouping "
        "needs is the WITHIN-task agreement: pairs of subsets that share a task, ordered alike "
        "by the estimate and by real fine-tunes (50% = chance), and the correlation with each "
        "task's mean removed. The noise ceiling is the same between two real training seeds. "
        "Every variant is scored on the same real fine-tunes (mean over the seeds; the replay "
        "predicts each seed's own batch order). Brackets: 95% bootstrap intervals over the "
        "sampled subsets (both seeds pooled).",
        "",
    ]
    for path in found:
        r = json.loads(path.read_text())
        d, t = r["config"]["data"], r["config"]["training"]
        lines += [
            f"### `{path.name}`: {len(r['config']['tasks'])} tasks, {d['max_train']} train / "
            f"{d['max_val']} val rows, {len(r['subsets'])} subsets x seeds {r['seeds']}",
            "",
            f"Recipe: {t['epochs']} epochs, lr {t['lr']}, batch {t['batch_size']}, loss "
            f"{t['loss']}, A frozen: {t['freeze_a']}, LoRA dropout "
            f"{r['config']['adapter']['dropout']}. Command: `{r['command']}`; real fine-tunes "
            f"{r['real_fine_tune_seconds']:.0f} s, features {r['features_seconds']:.0f} s "
            f"({r['created']}).",
            "",
        ]
        ceiling = r["noise_ceiling"] or {}
        rows = [_row("(noise ceiling: seed vs seed)", ceiling, None, ceiling)]
        rows += [
            _row(name, v["mean_over_seeds"], v["affinity_corr"], v)
            for name, v in r["variants"].items()
        ]
        lines += ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    return lines
