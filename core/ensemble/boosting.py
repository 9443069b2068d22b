"""Boosting, the paper's extra adapters on the residual of the ensemble so far.

Round r (`boost_round`): the current ensemble (the group adapters with the manifest's weights,
plus rounds 0..r-1) scores every task's train rows; the group whose rows it gets most wrong (the
paper's residual, mean 1 − p(gold), averaged over the group's tasks) gets a new adapter
`boost-<r>`. The adapter is fitted to improve on the ensemble: its change to the base model's
logits, L_r − L_0, is added to the ensemble's logits F, and the loss is the cross-entropy of
F + (L_r − L_0) over the answer words, by
  "features"  the estimator's replay (core.estimate.replay) on the stored gradient features, with F in
              place of the base logits: the recipe's AdamW steps on the linearised model, no
              training (the update Π w is written as a real adapter, A at its seeded init);
  "train"     a real fine-tune with F − L_0 as a fixed logit offset (core.train.trainer).
Then the step η ∈ [0, 1] that minimises the group's mean val NLL of F + η (L_r − L_0) is fitted;
η = 0 (the round is not used) when no step lowers it, so a round never makes val worse.

Each round is appended to the manifest's "boosting" list:
  {"name", "adapter" (folder relative to the workspace), "tasks", "group", "method", "step",
   "weights_kind" (the weights it was fitted on), "train_error_before", "train_error_after",
   "train_error_full_step" (at η = 1), "val_nll_before", "val_nll_after", "train_errors" (per
   group, the choice), "flops"}
and its cost to accounting.json's "boosting" stage.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from core.errors import GroupTuneError

BOOST_PREFIX = "boost-"


def boost_name(r: int) -> str:
    return f"{BOOST_PREFIX}{r}"


def method(cfg) -> str:
    """The configured boosting method, with "auto" resolved."""
    m = cfg.ensemble.boosting_method
    if m == "auto":
        return "features" if cfg.features.target == "choices" else "train"
    return m


def missing_rounds(cfg, manifest: dict | None) -> list[int]:
    """The configured rounds (ensemble.boosting) a manifest does not hold yet: rounds count
    only when made on the weights the config asks for. Torch-free: the dashboard asks it."""
    if manifest is None or manifest.get("weights_kind") != cfg.ensemble.weights:
        return list(range(cfg.ensemble.boosting))
    made = [
        b for b in manifest.get("boosting", []) if b["weights_kind"] == manifest["weights_kind"]
    ]
    return list(range(len(made), cfg.ensemble.boosting))


def boost(cfg, ws) -> list[dict]:
    """Every configured round not made yet (ensemble.boosting of them); the manifest's rounds."""
    for r in range(cfg.ensemble.boosting):
        boost_round(cfg, ws, r)
    from core.ensemble.manifest import load_manifest

    return load_manifest(ws).get("boosting", [])


def boost_round(cfg, ws, r: int) -> dict:
    """Make boosting round r on the current ensemble (module docstring); returns its entry. A
    round already in the manifest, made on the same weights, is returned as it is."""
    from core.data.sources import select_tasks
    from core.ensemble.logits import add_adapter, load_adapters
    from core.ensemble.manifest import all_adapters, load_manifest, save_manifest
    from core.ensemble.weights import ensure_weights

    manifest = load_manifest(ws)
    tasks = select_tasks(cfg, [t for g in manifest["groups"] for t in g])
    start = time.monotonic()
    model, tok = load_adapters(cfg, ws, all_adapters(manifest), manifest["groups"])
    manifest = ensure_weights(cfg, ws, model, tok, tasks, manifest)
    made = [
        b for b in manifest.get("boosting", []) if b["weights_kind"] == manifest["weights_kind"]
    ]
    if len(made) > r:
        return made[r]
    if len(made) < r:
        raise GroupTuneError(f"boosting round {r} needs round {len(made)} first")
    ctx = _Context(cfg, ws, model, tok, tasks, manifest, made)
    errors = [ctx.train_error(g) for g in manifest["groups"]]
    g = int(np.argmax(errors))
    group = manifest["groups"][g]
    name, how = boost_name(r), method(cfg)
    fit_flops = (_fit_features if how == "features" else _fit_train)(ctx, name, group)
    add_adapter(model, ws, name, f"adapters/{name}")
    entry = ctx.choose_step(name, group) | {
        "name": name,
        "adapter": f"adapters/{name}",
        "tasks": list(group),
        "group": g,
        "method": how,
        "weights_kind": manifest["weights_kind"],
        "train_errors": errors,
    }
    entry["flops"] = int(fit_flops + ctx.forward_flops())
    manifest = {**manifest, "boosting": made + [entry]}
    save_manifest(ws, manifest)
    _record(ws, name, entry, time.monotonic() - start)
    return entry


class _Context:
    """The ensemble so far and cached logits of its adapters on the tasks' train and val rows."""

    def __init__(self, cfg, ws, model, tok, tasks, manifest, rounds):
        from core.data.prompts import encode_split

        self.cfg, self.ws, self.model, self.tok = cfg, ws, model, tok
        self.manifest, self.rounds, self.tally = manifest, rounds, []
        self.enc = {
            split: {t.name: encode_split(tok, t, split, cfg.data.max_tokens) for t in tasks}
            for split in ("train", "val")
        }

    def logits(self, split: str, task: str, adapter: str | None) -> np.ndarray:
        from core.ensemble.logits import cached_logits

        enc = self.enc[split][task]
        return cached_logits(self.ws, self.model, self.tok, enc, adapter, self.cfg, self.tally)

    def ensemble(self, split: str, task: str) -> np.ndarray:
        from core.ensemble.weights import compose

        of = lambda a: self.logits(split, task, a)  # noqa: E731
        return compose(of, task, self.manifest["weights"], self.rounds)

    def gold(self, split: str, task: str) -> np.ndarray:
        return self.enc[split][task].gold

    def train_error(self, group: list[str], z_of=None) -> float:
        """Mean over the group's tasks of mean(1 − p(gold)) on train rows (the residual)."""
        z_of = z_of or (lambda t: self.ensemble("train", t))
        return float(np.mean([1.0 - _p_gold(z_of(t), self.gold("train", t)).mean() for t in group]))

    def choose_step(self, name: str, group: list[str]) -> dict:
        """The step η in [0, 1] minimising the group's mean val NLL (0 when none lowers it)."""
        from scipy.optimize import minimize_scalar

        def parts(split, t):
            return self.ensemble(split, t), self.logits(split, t, name) - self.logits(
                split, t, None
            )

        val = {t: parts("val", t) for t in group}
        train = {t: parts("train", t) for t in group}

        def val_nll(eta):
            return float(
                np.mean([_nll(F + eta * d, self.gold("val", t)) for t, (F, d) in val.items()])
            )

        res = minimize_scalar(val_nll, bounds=(0.0, 1.0), method="bounded")
        eta = float(res.x) if val_nll(res.x) < val_nll(0.0) else 0.0
        return {
            "step": eta,
            "val_nll_before": val_nll(0.0),
            "val_nll_after": val_nll(eta),
            "train_error_before": self.train_error(group),
            "train_error_after": self.train_error(group, lambda t: train[t][0] + eta * train[t][1]),
            "train_error_full_step": self.train_error(group, lambda t: train[t][0] + train[t][1]),
        }

    def forward_flops(self) -> int:
        """FLOPs of the scoring passes this round ran (cached ones cost nothing again)."""
        from core.ensemble.logits import scoring_flops

        enc = next(iter(self.enc["val"].values()))
        return scoring_flops(self.model, self.tok, enc, sum(self.tally))


def _p_gold(z: np.ndarray, gold: np.ndarray) -> np.ndarray:
    from scipy.special import softmax

    return softmax(np.asarray(z, dtype=np.float64), axis=1)[np.arange(len(gold)), gold]


def _nll(z: np.ndarray, gold: np.ndarray) -> float:
    return float(-np.log(np.clip(_p_gold(z, gold), 1e-12, None)).mean())


# --- the two ways to fit a round ------------------------------------------------------------


def _fit_train(ctx: _Context, name: str, group: list[str]) -> int:
    """A real fine-tune (the training recipe) with F − L_0 as logit offsets; its FLOPs."""
    from core.train.trainer import train_adapter

    offsets = {
        split: [ctx.ensemble(split, t) - ctx.logits(split, t, None) for t in group]
        for split in ("train", "val")
    }
    try:
        record = train_adapter(ctx.cfg, ctx.ws, name, list(group), progress=False, offsets=offsets)
    except Exception as err:  # a round of another ensemble (StaleError): made again
        from core.errors import StaleError

        if not isinstance(err, StaleError):
            raise
        record = train_adapter(
            ctx.cfg, ctx.ws, name, list(group), progress=False, offsets=offsets, restart=True
        )
    return int(record["accounting"]["flops"])


def offset_features(tf, F_train: np.ndarray, F_val: np.ndarray):
    """TaskFeatures with the ensemble's choice logits F in place of the base model's: the
    linearised model becomes F + G w, so the replay fits what improves on the ensemble."""
    F_train, F_val = np.asarray(F_train, np.float64), np.asarray(F_val, np.float64)
    out = dataclasses.replace(tf, val_z=F_val, val_h=_log_odds(F_val, np.asarray(tf.val_gold)))
    if tf.train_G is not None:
        return dataclasses.replace(out, train_z=F_train)
    return dataclasses.replace(out, train_h=_log_odds(F_train, np.asarray(tf.train_gold)))


def _log_odds(z: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """log p/(1 − p) of the gold answer word among the task's answer words."""
    p = np.clip(_p_gold(z, gold), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def _fit_features(ctx: _Context, name: str, group: list[str]) -> int:
    """The replay on offset features, written as adapter `name`; the replay's FLOPs."""
    from core.estimate.replay import replay
    from core.gradients.store import load_features

    cfg = ctx.cfg
    if cfg.features.target != "choices":
        raise GroupTuneError(
            "boosting from features needs features.target 'choices' (the ensemble mixes answer-"
            "word logits); set ensemble.boosting_method: train"
        )
    feats = [
        offset_features(load_features(ctx.ws, t), ctx.ensemble("train", t), ctx.ensemble("val", t))
        for t in group
    ]
    fit = replay(feats, cfg.training)
    write_update_adapter(cfg, ctx.ws, name, group, fit.w)
    return int(fit.flops)


def write_update_adapter(cfg, ws, name: str, tasks: list[str], w) -> None:
    """Save the seeded adapter with B = Π w (A at its init, the features' expansion point) as a
    finished adapter folder: adapter files, then grouptune.json (it marks completion)."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from core.estimate.real import apply_update
    from core.gradients.projection import projector_for
    from core.io import write_json
    from core.models.adapters import attach_adapter, lora_b_parameters
    from core.models.fingerprint import model_fingerprint
    from core.models.loading import load_model

    model, _ = load_model(cfg.model)
    peft_model = attach_adapter(model, cfg.adapter)
    params = lora_b_parameters(peft_model)
    dims = [p.numel() for _, p in params]
    proj = projector_for(cfg.features, dims)
    apply_update(peft_model, proj.lift(np.asarray(w, dtype=np.float64)), params)
    out = ws.adapter_dir(name)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.tmp-", dir=out))
    try:
        peft_model.save_pretrained(str(tmp))
        for fname in ("adapter_config.json", "adapter_model.safetensors"):
            os.replace(tmp / fname, out / fname)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record = {
        "name": name,
        "tasks": list(tasks),
        "method": "features",
        "base_model": model_fingerprint(cfg.model),
        "update_norm": float(np.linalg.norm(w)),
    }
    write_json(out / "grouptune.json", record)


def _record(ws, name: str, entry: dict, wall: float) -> None:
    from core.accounting import Accounting, peak_rss_bytes, stage_entry

    acct = stage_entry(entry["flops"], wall, peak_rss_bytes(), 0, f"boosting ({entry['method']})")
    Accounting(ws).record("boosting", acct, part=name)
