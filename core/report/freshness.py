"""Whether report.json is current: the rule `grouptune report` uses to keep it and the
dashboard's stage view shows. Torch-free.

The report compares the evaluations (eval/*.json) of the ensemble its manifest describes; it is
current while those files are byte for byte what it was made from. The cost accounting is left
out: recomputing features under the same key (as `make demo` does on a fresh clone) rewrites
their wall time there without changing anything the report compares.
"""

from __future__ import annotations

from core.artifacts import MANIFEST, REPORT
from core.provenance import digest, first_change
from core.train.eval_status import MODELS

LABELS = {
    "evaluations": "evaluated again since",
    "manifest": "the ensemble changed since",
}


def report_inputs(ws) -> dict:
    """What report.json is made from; stored in it as "inputs"."""
    return {
        "evaluations": {m: digest(ws.path("eval", f"{m}.json")) for m in MODELS},
        "manifest": digest(MANIFEST.path(ws)),
    }


def report_status(ws) -> str:
    """'fresh', 'stale (why)' or 'missing' for report.json."""
    report = REPORT.read(ws)
    if report is None:
        return "missing"
    legacy = "made before reports were fingerprinted"
    why = first_change(report.get("inputs"), report_inputs(ws), LABELS, legacy)
    return f"stale ({why})" if why else "fresh"
