"""Whether a test evaluation is current: the one rule `grouptune evaluate` uses to skip a model
it already scored and the dashboard shows (core.views.stages). Torch-free: it hashes the
files an evaluation was computed from, never loads a model.

An evaluation (eval/<model>.json, model one of zero_shot, baseline, ensemble) is current when
it was made on the same base model, the same test rows (the tasks' contents), the same token
budget and, for the trained models, the same adapters (their grouptune.json records) and, for
the ensemble, the same manifest and ensemble settings.
"""

from __future__ import annotations

from core.artifacts import MANIFEST
from core.provenance import digest, first_change

MODELS = ("zero_shot", "baseline", "ensemble")


def eval_inputs(ws, cfg, model: str, hashes: dict) -> dict:
    """What an evaluation of `model` is computed from; stored as its record's "fingerprint".

    `hashes`: task -> Task.content_hash() of the configured tasks."""
    from core.models.fingerprint import model_fingerprint

    fp = {"model": model_fingerprint(cfg.model), "tasks": hashes, "max_tokens": cfg.data.max_tokens}
    if model == "baseline":
        fp["adapters"] = {"baseline": digest(ws.path("adapters", "baseline", "grouptune.json"))}
    if model == "ensemble":
        manifest = MANIFEST.read(ws) or {}
        folders = list((manifest.get("adapters") or {}).values())
        folders += [r["adapter"] for r in manifest.get("boosting") or [] if r.get("adapter")]
        fp["adapters"] = {f: digest(ws.path(f, "grouptune.json")) for f in folders}
        fp["manifest"] = digest(MANIFEST.path(ws))
        fp["ensemble"] = cfg.ensemble.model_dump(mode="json")
    return fp


def eval_status(ws, cfg, model: str, hashes: dict) -> str:
    """'fresh', 'stale (why)' or 'missing' for eval/<model>.json."""
    record = ws.read("eval", f"{model}.json")
    if record is None:
        return "missing"
    why = stale_reason(record.get("fingerprint"), eval_inputs(ws, cfg, model, hashes))
    return f"stale ({why})" if why else "fresh"


def stale_reason(old: dict | None, now: dict) -> str | None:
    """Why an evaluation made from `old` is not current for `now`, or None when it is."""
    from core.models.fingerprint import same_model

    if old and not same_model(old.get("model"), now["model"]):
        return "another base model"
    labels = {
        "tasks": "the test rows changed",
        "max_tokens": "the token budget changed",
        "adapters": "retrained since",
        "manifest": "the ensemble's weights or boosting changed",
        "ensemble": "the ensemble settings changed",
    }
    return first_change(old, now, labels, "made before evaluations were fingerprinted")
