"""What a workspace document was made from, and why it is no longer current.

A step stores the inputs it was computed from beside its output (a dict of short digests and
settings); the step's freshness rule compares them with today's and names the first that
changed. The engine skips a step by that rule and the dashboard shows it, so both agree.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def digest(path: Path) -> str | None:
    """A short sha256 of the file's bytes; None when it is not there."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def first_change(old: dict | None, now: dict, labels: dict[str, str], legacy: str) -> str | None:
    """Why an output made from `old` is not current for `now` (the label of the first key in
    `labels` whose value differs), `legacy` when it holds no inputs (or something else than
    inputs, as a hand-edited file may), None when it is current."""
    if not old or not isinstance(old, dict):
        return legacy
    return next((why for key, why in labels.items() if old.get(key) != now.get(key)), None)
