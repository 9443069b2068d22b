"""Using what was trained: a workspace's ensemble as one object that answers rows.

    from core.ensemble import Ensemble
    ens = Ensemble.load("workspaces/quick")
    for p in ens.predict("yelp_positive", [{"text": "The soup was cold."}], explain=True):
        print(p["answer"], p["probabilities"])

`Ensemble.scores` is the one place the ensemble's choice scores are computed: `grouptune
evaluate` (core.ensemble.combine) and `grouptune predict` both go through it, so a prediction
and the reported test accuracy come from the same numbers. The ensemble is the manifest's
weights plus the boosting rounds the config uses (`active_rounds`), exactly what `evaluate`
scores; its probabilities are a softmax over the answer words' scores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.data.inputs import needs_pair
from core.data.prompts import Encoded, answer_tokens, encode_prompt
from core.ensemble.manifest import MANIFEST, active_rounds, all_adapters, load_manifest
from core.errors import DataError, GroupTuneError, StaleError

BASELINE = "baseline"
CHUNK_ROWS = 512  # rows scored per chunk: bounds memory on a large input file


class Ensemble:
    """The base model with every adapter of the ensemble (and optionally the baseline) loaded
    once into one PeftModel, the manifest, and the tasks' templates and answer words."""

    def __init__(self, cfg, ws, model, tokenizer, manifest: dict | None, baseline: dict | None):
        self.cfg, self.ws, self.model, self.tokenizer = cfg, ws, model, tokenizer
        self.manifest, self.baseline = manifest, baseline  # baseline: its grouptune.json
        self._tasks: dict = {}

    # --- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, ws, cfg=None, *, ensemble: bool = True, baseline: bool = False) -> Ensemble:
        """The workspace's trained ensemble (`ensemble`) and/or single baseline adapter.

        ws: a Workspace or its folder; cfg: its config (default: the workspace's snapshot).
        Raises GroupTuneError when what is asked for is not trained, StaleError when it was
        trained on another base model than the config's."""
        from core.ensemble.logits import add_adapter, load_adapters
        from core.workspace import Workspace

        ws = ws if isinstance(ws, Workspace) else Workspace(ws)
        cfg = cfg if cfg is not None else ws.load_config()
        manifest = checked_manifest(cfg, ws) if ensemble else None
        record = _baseline_record(ws) if baseline else None
        if manifest is None and record is None:
            raise GroupTuneError(
                f"nothing to load from {ws.root}: ask for the ensemble or baseline"
            )
        if manifest is not None:
            model, tok = load_adapters(cfg, ws, all_adapters(manifest), manifest["groups"])
            if record is not None:
                add_adapter(model, ws, BASELINE, f"adapters/{BASELINE}")
        else:
            model, tok = load_adapters(cfg, ws, {BASELINE: f"adapters/{BASELINE}"})
        return cls(cfg, ws, model, tok, manifest, record)

    # --- what the ensemble is ----------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        if self.manifest is not None:
            return [t for g in self.manifest["groups"] for t in g]
        return list(self.baseline["tasks"])

    @property
    def rounds(self) -> list[dict]:
        """The boosting rounds the configured ensemble uses (what `evaluate` scores)."""
        return active_rounds(self.manifest, self.cfg) if self.manifest else []

    def weights(self, task: str) -> dict[str, float]:
        return dict(self.manifest["weights"][task])

    def task(self, name: str):
        """The Task (template, answer words, rows) of one of the ensemble's tasks."""
        if name not in self.task_names:
            raise GroupTuneError(
                f"unknown task {name!r}; this workspace's tasks: {self.task_names}"
            )
        if name not in self._tasks:
            from core.data.sources import select_tasks

            self._tasks[name] = select_tasks(self.cfg, [name])[0]
        return self._tasks[name]

    # --- scores ------------------------------------------------------------------------------
    def encode(self, task: str, rows: list[dict], split: str = "input") -> Encoded:
        """Rows ({"text", "text_pair"?, "label"?}) as prompts cut to data.max_tokens; gold is
        the label's index, or -1 for a row without a label."""
        t = self.task(task)
        index = {lab: i for i, lab in enumerate(t.labels)}
        gold = []
        for i, row in enumerate(rows, start=1):
            if needs_pair(t) and not row.get("text_pair"):
                raise DataError("the task's template needs a second text", row=i, field="text_pair")
            label = row.get("label")
            if label not in (None, "") and str(label) not in index:
                raise DataError(
                    f"label {label!r} is not one of {list(index)}", row=i, field="label"
                )
            gold.append(index[str(label)] if label not in (None, "") else -1)
        ids = [encode_prompt(self.tokenizer, t, r, self.cfg.data.max_tokens) for r in rows]
        return Encoded(
            task, split, ids, np.array(gold, dtype=np.int64), answer_tokens(self.tokenizer, t)
        )

    def logits(self, enc: Encoded, adapter: str | None, cache: bool = False) -> np.ndarray:
        """(n, C) choice scores of `enc` with only `adapter` active (None: the base model).
        `cache`: reuse/keep them under eval/cache/ (the evaluation's splits; new inputs are not
        kept)."""
        from core.ensemble.logits import adapter_logits, cached_logits
        from core.models.scoring import choice_logits

        if cache:
            return cached_logits(self.ws, self.model, self.tokenizer, enc, adapter, self.cfg)
        if adapter is not None:
            return adapter_logits(self.model, self.tokenizer, enc, adapter, self.cfg)
        with self.model.disable_adapter():
            bs = self.cfg.features.batch_size
            return choice_logits(self.model, self.tokenizer, enc, bs, f"{enc.task} base")

    def logits_of(self, enc: Encoded, cache: bool = False) -> Callable[[str | None], np.ndarray]:
        """adapter -> (n, C) scores of `enc`, each adapter's pass run at most once."""
        memo: dict = {}

        def of(adapter: str | None) -> np.ndarray:
            if adapter not in memo:
                memo[adapter] = self.logits(enc, adapter, cache)
            return memo[adapter]

        return of

    def scores(self, task: str, logits_of, weights: dict | None = None, rounds=None) -> np.ndarray:
        """The ensemble's (n, C) choice scores: core.ensemble.weights.compose of the manifest's
        weights and the active boosting rounds (or the `weights` / `rounds` given)."""
        from core.ensemble.weights import compose

        weights = weights if weights is not None else self.manifest["weights"]
        rounds = rounds if rounds is not None else self.rounds
        return compose(logits_of, task, weights, rounds)

    # --- predictions -------------------------------------------------------------------------
    def predict(self, task: str, rows: list[dict], explain: bool = False) -> list[dict]:
        """One dict per row, in order: "row" (1-based), "prompt" (what the model saw, after the
        token budget), "answer" (a label), "answer_word", "probabilities" {label: p}, "label"
        (the row's own, or None). `explain` adds "adapters" (each group adapter's weight and
        answer, each boosting round's step and the answer it pushes toward) and "baseline"
        (the single adapter's answer; None when it is not loaded or not trained on `task`)."""
        from core.progress import track

        if self.manifest is None:
            raise GroupTuneError(f"no {MANIFEST} in {self.ws.root}: train the group adapters first")
        out: list[dict] = []
        with track(len(rows), f"predict {task}", unit="row") as bar:
            for start in range(0, len(rows), CHUNK_ROWS):
                chunk = rows[start : start + CHUNK_ROWS]
                out += self._predict_chunk(task, chunk, start, explain)
                bar.update(len(chunk))
        return out

    def _predict_chunk(self, task: str, rows: list[dict], start: int, explain: bool) -> list[dict]:
        t = self.task(task)
        labels, words = t.label_names, t.answer_words
        enc = self.encode(task, rows)
        of = self.logits_of(enc)
        p = _softmax(self.scores(task, of))
        out = []
        for i in range(len(rows)):
            best = int(p[i].argmax())
            out.append(
                {
                    "row": start + i + 1,
                    "prompt": self.tokenizer.decode(enc.input_ids[i]),
                    "answer": labels[best],
                    "answer_word": words[best],
                    "probabilities": dict(zip(labels, map(float, p[i]), strict=True)),
                    "label": labels[enc.gold[i]] if enc.gold[i] >= 0 else None,
                }
            )
        if explain:
            for i, parts in enumerate(self._explain(task, of, labels)):
                out[i].update(parts)
        return out

    def _explain(self, task: str, of, labels: list[str]) -> list[dict]:
        """Per row: every group adapter's answer with its weight for `task`, every active
        boosting round's push (its step × its change to the base model's scores), the baseline."""
        n = len(of(next(iter(self.manifest["adapters"]))))
        rows: list[dict] = [{"adapters": [], "baseline": None} for _ in range(n)]
        weights = self.weights(task)
        for name in self.manifest["adapters"]:
            p = _softmax(of(name))
            for i in range(n):
                rows[i]["adapters"].append(
                    _vote(name, "group", weights.get(name, 0.0), p[i], labels)
                )
        for b in self.rounds:
            if task in b["tasks"] and b["step"] > 0:
                shift = b["step"] * (of(b["name"]).astype(np.float64) - of(None))
                for i in range(n):
                    vote = _vote(b["name"], "boost", b["step"], None, labels, shift[i])
                    rows[i]["adapters"].append(vote)
        if self.baseline is not None and task in self.baseline["tasks"]:
            p = _softmax(of(BASELINE))
            for i in range(n):
                rows[i]["baseline"] = _vote(BASELINE, "baseline", 1.0, p[i], labels)
        return rows


def _vote(name, role, weight, p, labels, shift=None) -> dict:
    """One adapter's part in a row's answer: its own answer and probabilities, or for a
    boosting round the answer its shift favours and the shift itself."""
    out = {"adapter": name, "role": role, "weight": float(weight)}
    values = p if shift is None else shift
    out["answer"] = labels[int(np.argmax(values))]
    if shift is None:
        out["probabilities"] = dict(zip(labels, map(float, p), strict=True))
    else:
        out["shift"] = dict(zip(labels, map(float, shift), strict=True))
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    from core.models.scoring import softmax

    return softmax(np.asarray(z, dtype=np.float64))


def checked_manifest(cfg, ws) -> dict:
    """The manifest, refused when it was made for another base model than the config's."""
    from core.models.fingerprint import model_fingerprint, same_model

    manifest = load_manifest(ws)
    if not same_model(manifest["base_model"], model_fingerprint(cfg.model)):
        raise StaleError(
            f"{ws.path(MANIFEST)} was made for another base model ({manifest['base_model']}); "
            "retrain the group adapters or restore the config they were made with"
        )
    return manifest


def _baseline_record(ws) -> dict:
    from core.train.run import read_json_file

    path: Path = ws.adapter_dir(BASELINE)
    if not (path / "grouptune.json").exists():
        raise GroupTuneError(f"no finished baseline adapter in {path}: train it first")
    return read_json_file(path / "grouptune.json")


def has_baseline(ws) -> bool:
    """True when the workspace holds a finished baseline adapter."""
    return (ws.adapter_dir(BASELINE) / "grouptune.json").exists()
