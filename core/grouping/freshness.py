"""Whether the chosen grouping (groupings/chosen.json) is current: the rule `grouptune group`
uses to keep it (so `grouptune run` never overwrites a grouping edited by hand that is still
current) and the dashboard's stage view shows. Torch-free.

A grouping is current while the affinity matrix it was chosen on and the grouping settings
(method, m, seed) are today's. A hand-edited grouping records the same inputs, so it stays
chosen until one of them changes.
"""

from __future__ import annotations

from core.artifacts import AFFINITY, CHOSEN, SWEEP
from core.provenance import first_change

LABELS = {
    "affinity": "the affinity matrix changed since",
    "grouping": "the grouping settings changed",
}


def _affinity(ws) -> dict | None:
    return (AFFINITY.read(ws) or {}).get("fingerprint")


def grouping_inputs(cfg, ws) -> dict:
    """What a chosen grouping is chosen from; stored in chosen.json as "inputs"."""
    settings = cfg.grouping.model_dump(mode="json", include={"method", "m", "seed"})
    return {"affinity": _affinity(ws), "grouping": settings}


def grouping_status(cfg, ws) -> str:
    """'fresh', 'stale (why)' or 'missing' for groupings/chosen.json."""
    chosen = CHOSEN.read(ws)
    if chosen is None:
        return "missing"
    if "inputs" not in chosen:  # chosen before groupings recorded their inputs: file times
        return _by_file_times(ws)
    why = first_change(chosen["inputs"], grouping_inputs(cfg, ws), LABELS, "no inputs")
    return f"stale ({why})" if why else "fresh"


def _by_file_times(ws) -> str:
    """The rule of older workspaces, so their groupings (hand-edited ones included) are kept:
    current when chosen.json is not older than affinity.json."""
    if CHOSEN.path(ws).stat().st_mtime < AFFINITY.path(ws).stat().st_mtime:
        return f"stale ({LABELS['affinity']})"
    return "fresh"


def sweep_inputs(cfg, ws) -> dict:
    """What the candidate groupings (groupings/sweep.json) are computed from: the affinity
    matrix, and grouping.seed, which the spectral method's random draws follow."""
    return {"affinity": _affinity(ws), "seed": cfg.grouping.seed}


def sweep_fresh(cfg, ws) -> bool:
    """True when sweep.json holds the candidates of today's affinity matrix and seed."""
    sweep, now = SWEEP.read(ws), sweep_inputs(cfg, ws)
    return bool(sweep and now["affinity"] is not None and sweep.get("fingerprint") == now)
