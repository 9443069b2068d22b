"""Predictions as files and text, without torch: `grouptune predict` writes them and the Try it
page reads them back (core.views.tryit).

The document (`--json`, or `--output FILE.json`):
  {"task", "labels": {label: answer word}, "explain": bool, "rows": [one dict per row, see
   core.ensemble.predict.Ensemble.predict, plus "text" / "text_pair"], "labelled": n rows with
   a label, "accuracy": share of those answered right (None when no row has a label)}
`--output FILE.csv` flattens it: one line per row (`table`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.errors import GroupTuneError
from core.io import write_json, write_text

OUTPUT_TYPES = (".csv", ".json")


def document(task, rows: list[dict], predictions: list[dict], explain: bool) -> dict:
    """The predictions of `task` (a core.data.tasks.Task) on `rows`, with the inputs beside."""
    out = []
    for row, pred in zip(rows, predictions, strict=True):
        texts = {k: row[k] for k in ("text", "text_pair") if k in row}
        out.append({**texts, **pred})
    labelled = [p for p in out if p.get("label") is not None]
    right = sum(p["answer"] == p["label"] for p in labelled)
    return {
        "task": task.name,
        "labels": dict(task.labels),
        "explain": explain,
        "rows": out,
        "labelled": len(labelled),
        "accuracy": right / len(labelled) if labelled else None,
    }


def check_output(path: Path | None) -> None:
    if path is not None and Path(path).suffix.lower() not in OUTPUT_TYPES:
        raise GroupTuneError(f"--output {path}: use a .csv or .json file name")


def table(doc: dict) -> pd.DataFrame:
    """One line per row: row, texts, label, answer, p(<label>) for each label, and with
    explain each adapter's answer and weight and the baseline's answer."""
    lines = []
    for r in doc["rows"]:
        line = {k: r.get(k) for k in ("row", "text", "text_pair", "label", "answer")}
        line.update({f"p({lab})": p for lab, p in r["probabilities"].items()})
        for vote in r.get("adapters") or []:
            line[f"{vote['adapter']} answer"] = vote["answer"]
            line[f"{vote['adapter']} weight"] = vote["weight"]
        if doc["explain"]:
            line["baseline answer"] = (r.get("baseline") or {}).get("answer")
        lines.append(line)
    df = pd.DataFrame(lines)
    return df.drop(columns=[c for c in ("text_pair", "label") if df[c].isna().all()])


def write(path: Path, doc: dict) -> Path:
    """`doc` as JSON or CSV (by the file name), written atomically."""
    check_output(path)
    if Path(path).suffix.lower() == ".json":
        return write_json(path, doc)
    return write_text(path, table(doc).to_csv(index=False))


def text(doc: dict) -> str:
    """For a terminal: per row its answer and probabilities, then (explain) each adapter's."""
    lines = []
    for r in doc["rows"]:
        probs = ", ".join(f"{lab} {p:.3f}" for lab, p in r["probabilities"].items())
        mark = "" if r.get("label") is None else f"  [label {r['label']}]"
        lines.append(f"row {r['row']}: {r['answer']}  ({probs}){mark}")
        for vote in r.get("adapters") or []:
            if vote["role"] == "boost":
                lines.append(
                    f"    {vote['adapter']:<10} step {vote['weight']:.3f}  pushes toward "
                    f"{vote['answer']}"
                )
            else:
                p = vote["probabilities"][vote["answer"]]
                lines.append(
                    f"    {vote['adapter']:<10} weight {vote['weight']:.3f}  says "
                    f"{vote['answer']} ({p:.3f})"
                )
        if doc["explain"]:
            base = r.get("baseline")
            said = (
                f"{base['answer']} ({base['probabilities'][base['answer']]:.3f})" if base else "-"
            )
            lines.append(f"    {'baseline':<10} single adapter says {said}")
    if doc["accuracy"] is not None:
        lines.append(f"accuracy {doc['accuracy']:.4f} on {doc['labelled']} labelled row(s)")
    return "\n".join(lines)
