"""Whether report.json is current: the rule `grouptune report` uses to keep it and the
dashboard's stage view shows. Torch-free.

The report is assembled from the evaluations (eval/*.json), the ensemble's manifest and the
cost accounting; it is current while those files are byte for byte what it was made from.
"""

from __future__ import annotations

from core.artifacts import MANIFEST, REPORT
from core.provenance import digest, first_change
from core.train.eval_status import MODELS

LABELS = {
    "evaluations": "evaluated again since",
    "manifest": "the ensemble changed since",
    "accounting": "the cost accounting changed since",
}


def report_inputs(ws) -> dict:
    """What report.json is made from; stored in it as "inputs"."""
    return {
        "evaluations": {m: digest(ws.path("eval", f"{m}.json")) for m in MODELS},
        "manifest": digest(MANIFEST.path(ws)),
        "accounting": digest(ws.path("accounting.json")),
    }


def report_status(ws) -> str:
    """'fresh', 'stale (why)' or 'missing' for report.json."""
    report = REPORT.read(ws)
    if report is None:
        return "missing"
    legacy = "made before reports were fingerprinted"
    why = first_change(report.get("inputs"), report_inputs(ws), LABELS, legacy)
    return f"stale ({why})" if why else "fresh"
