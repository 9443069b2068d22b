"""The gradient store end to end on a tiny model: keys, staleness, resume, atomic completion."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import core.gradients.extract as features
from core.config import parse_config
from core.data.sources import load_tasks
from core.errors import GroupTuneError, StaleError
from core.gradients.extract import extract_features
from core.gradients.store import FeatureStore, load_features, store_status
from core.workspace import Workspace

ARRAYS = ["train_h", "train_g", "train_gold", "val_z", "val_lse", "val_h", "val_G", "val_gold"]


def _cfg(task_root, tasks=("alpha", "beta"), **sections):
    data = {
        "model": {
            "name": "tiny-llama",
            "quantization": "none",
            "dtype": "float32",
            "device": "cpu",
        },
        "adapter": {"r": 2, "alpha": 4, "seed": 0},
        "data": {"root": str(task_root), "max_tokens": 64},
        "tasks": list(tasks),
        "features": {"projection": "countsketch", "k": 16, "batch_size": 4},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return parse_config(data, base_dir=task_root.parent)


def _arrays(ws, task) -> dict[str, np.ndarray]:
    f = load_features(ws, task)
    return {name: np.array(getattr(f, name)) for name in ARRAYS}


def test_extract_then_fresh_and_readable(tiny_task_root, tmp_path):
    cfg, ws = _cfg(tiny_task_root), Workspace(tmp_path / "ws")
    assert store_status(ws, cfg) == {"alpha": "missing", "beta": "missing"}
    result = extract_features(cfg, ws)
    assert result["alpha"]["status_before"] == "missing"
    assert result["alpha"]["rows_computed"] == 12 + 6
    assert store_status(ws, cfg) == {"alpha": "fresh", "beta": "fresh"}
    f = load_features(ws, "alpha", cfg, load_tasks(cfg)[0])
    assert isinstance(f.train_g, np.memmap) and f.target == "choices" and f.k == 16
    assert f.train_h.shape == (12,) and f.train_g.shape == (12, 16)
    assert f.val_z.shape == (6, 2) and f.val_G.shape == (6, 2, 16) and f.val_Glse is None
    task = load_tasks(cfg)[0]
    np.testing.assert_array_equal(f.train_gold, task.gold("train"))  # split order kept
    assert np.abs(f.train_g).sum() > 0 and f.meta["complete"] and f.meta["resolved"]["D"] > 16
    again = extract_features(cfg, ws)
    assert all(r["rows_computed"] == 0 and r["status_before"] == "fresh" for r in again.values())


def test_identity_projection_stores_the_exact_b_gradients(tiny_task_root, tmp_path):
    """projection "identity": k = D whatever features.k says, and the stored train gradients
    are the per-example reference's exact B-gradients."""
    from core.data.prompts import encode_split
    from core.gradients.extract import load_extraction_model
    from core.gradients.per_example import reference_example_grads

    cfg = _cfg(tiny_task_root, ["alpha"], features={"projection": "identity", "k": 3})
    ws = Workspace(tmp_path / "ws")
    extract_features(cfg, ws)
    f = load_features(ws, "alpha", cfg, load_tasks(cfg)[0])
    assert f.k == f.meta["resolved"]["D"] == f.train_g.shape[1] > 3
    assert f.train_G is None  # two answer words: h and g say everything
    model, tok, _ = load_extraction_model(cfg)
    enc = encode_split(tok, load_tasks(cfg)[0], "train", cfg.data.max_tokens)
    ref = reference_example_grads(model, enc.input_ids[:3], enc.choice_ids, enc.gold[:3], "choices")
    np.testing.assert_allclose(np.asarray(f.train_g[:3]), ref["g"], rtol=1e-4, atol=1e-6)


def test_auto_projection_keeps_a_small_adapter_exact(tiny_task_root, tmp_path):
    """The default ("auto") on a small adapter is the identity: the same arrays as asking for
    it by name; and what it resolved to is recorded with the store."""
    ws_auto, ws_id = Workspace(tmp_path / "auto"), Workspace(tmp_path / "id")
    auto = _cfg(tiny_task_root, ["alpha"], features={"projection": "auto", "k": None})
    exact = _cfg(tiny_task_root, ["alpha"], features={"projection": "identity"})
    extract_features(auto, ws_auto)
    extract_features(exact, ws_id)
    a, b = load_features(ws_auto, "alpha"), load_features(ws_id, "alpha")
    assert a.k == b.k == a.meta["resolved"]["D"]
    assert a.meta["resolved"]["projection"] == {"kind": "identity", "k": a.k}
    np.testing.assert_array_equal(np.asarray(a.train_g), np.asarray(b.train_g))


def test_three_answer_words_store_per_choice_train_gradients(tmp_path):
    """With 3+ answer words, train rows also keep every answer word's logit and exact
    B-gradient (what the replay's softmax needs); two words keep h and g only."""
    from conftest import topic_rows, write_task

    from core.data.prompts import encode_split
    from core.gradients.extract import load_extraction_model
    from core.gradients.per_example import reference_example_grads

    labels = {"sports": " sports", "politics": " politics", "science": " science"}
    rows = [{**r, "label": ["sports", "politics", "science"][i % 3]} for i, r in
            enumerate(topic_rows(18))]  # fmt: skip
    write_task(tmp_path / "tasks", "three", {"train": rows[:9], "val": rows[9:15],
               "test": rows[15:]}, labels, template="News: {text}\nTopic:")  # fmt: skip
    cfg = _cfg(tmp_path / "tasks", ["three"], features={"projection": "identity"})
    ws = Workspace(tmp_path / "ws")
    extract_features(cfg, ws)
    f = load_features(ws, "three", cfg, load_tasks(cfg)[0])
    assert f.train_z.shape == (9, 3) and f.train_G.shape == (9, 3, f.k)
    model, tok, _ = load_extraction_model(cfg)
    enc = encode_split(tok, load_tasks(cfg)[0], "train", cfg.data.max_tokens)
    ids, gold = enc.input_ids[:3], enc.gold[:3]
    ref = reference_example_grads(model, ids, enc.choice_ids, gold, "choices", split="val")
    np.testing.assert_allclose(np.asarray(f.train_G[:3]), ref["G"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(f.train_z[:3]), ref["z"], rtol=1e-5, atol=1e-6)
    assert load_features(ws, "three").train_G is not None


def test_vocab_target_stores_glse(tiny_task_root, tmp_path):
    cfg, ws = (
        _cfg(tiny_task_root, ["alpha"], features={"target": "vocab"}, training={"loss": "vocab"}),
        Workspace(tmp_path),
    )
    extract_features(cfg, ws)
    f = load_features(ws, "alpha")
    assert f.val_Glse.shape == (6, 16) and f.target == "vocab" and (f.train_h < 0).all()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"features": {"k": 8}}, "projection.k: 16 -> 8"),
        ({"features": {"seed": 1}}, "projection.seed: 0 -> 1"),
        ({"features": {"projection": "rademacher"}}, "projection.kind"),
        ({"model": {"name": "tiny-gpt2"}}, "model.name"),
        ({"adapter": {"top_layers": 1}}, "adapter.top_layers"),
        ({"adapter": {"seed": 1}}, "adapter.seed: 0 -> 1"),  # another init = expansion point
        ({"features": {"projection": "identity"}}, "projection.kind"),
        ({"data": {"max_tokens": 12}}, "max_tokens: 64 -> 12"),
    ],
)
def test_changed_settings_make_the_store_stale(tiny_task_root, tmp_path, change, reason, caplog):
    ws = Workspace(tmp_path / "ws")
    extract_features(_cfg(tiny_task_root, ["alpha"]), ws)
    before = _arrays(ws, "alpha")
    cfg = _cfg(tiny_task_root, ["alpha"], **change)
    status = store_status(ws, cfg)["alpha"]
    assert status.startswith("stale (") and reason in status
    with pytest.raises(StaleError, match="stale"):
        load_features(ws, "alpha", cfg, load_tasks(cfg)[0])
    with caplog.at_level(logging.WARNING, logger="grouptune.store"):
        result = extract_features(cfg, ws)
    assert result["alpha"]["rows_computed"] == 18 and reason in caplog.text
    assert store_status(ws, cfg)["alpha"] == "fresh"
    assert not np.array_equal(before["train_g"], _arrays(ws, "alpha")["train_g"])


def test_changed_template_is_stale(tiny_task_root, tmp_path):
    ws = Workspace(tmp_path / "ws")
    extract_features(_cfg(tiny_task_root, ["alpha"]), ws)
    cfg = _cfg(tiny_task_root, [{"name": "alpha", "template": "Text: {text}\nSentiment:"}])
    assert store_status(ws, cfg)["alpha"].startswith("stale (task.template")


def test_adding_a_task_computes_only_that_task(tiny_task_root, tmp_path):
    ws = Workspace(tmp_path / "ws")
    extract_features(_cfg(tiny_task_root, ["alpha"]), ws)
    result = extract_features(_cfg(tiny_task_root), ws)
    assert result["alpha"]["rows_computed"] == 0 and result["beta"]["rows_computed"] == 18


class _Kill(Exception):
    pass


def test_resume_after_a_kill_gives_identical_arrays(tiny_task_root, tmp_path):
    cfg = _cfg(tiny_task_root, ["alpha"], features={"target": "vocab"}, training={"loss": "vocab"})
    clean = Workspace(tmp_path / "clean")
    extract_features(cfg, clean)
    ws, seen = Workspace(tmp_path / "ws"), []

    def kill_after_two(task, split, rows):
        seen.append(len(rows))
        if len(seen) == 2:
            raise _Kill

    with pytest.raises(_Kill):
        extract_features(cfg, ws, on_batch=kill_after_two)
    assert store_status(ws, cfg)["alpha"] == "partial (8/18)"
    with pytest.raises(StaleError, match="incomplete"):
        load_features(ws, "alpha")  # an interrupted store is never taken as complete
    result = extract_features(cfg, ws)
    assert result["alpha"]["status_before"] == "partial (8/18)"
    assert result["alpha"]["rows_computed"] == 10
    for name, value in _arrays(clean, "alpha").items():
        np.testing.assert_array_equal(_arrays(ws, "alpha")[name], value, err_msg=name)


def test_kill_mid_write_leaves_batch_pending(tiny_task_root, tmp_path, monkeypatch):
    """A crash between a batch's data and its done mask recomputes that batch, nothing more."""
    cfg, ws = _cfg(tiny_task_root, ["alpha"]), Workspace(tmp_path / "ws")
    original, calls = FeatureStore.write, []

    def crashing_write(self, split, rows, values):
        calls.append(split)
        if len(calls) == 3:
            self.arrays[split]["h"][rows] = 123.0  # data half-written, done mask not yet
            raise _Kill
        original(self, split, rows, values)

    monkeypatch.setattr(FeatureStore, "write", crashing_write)
    with pytest.raises(_Kill):
        extract_features(cfg, ws)
    monkeypatch.setattr(FeatureStore, "write", original)
    assert store_status(ws, cfg)["alpha"] == "partial (8/18)"
    assert extract_features(cfg, ws)["alpha"]["rows_computed"] == 10
    assert (np.asarray(load_features(ws, "alpha").train_h) != 123.0).all()


def test_nan_feature_names_task_split_and_row(tiny_task_root, tmp_path, monkeypatch):
    original = features.batch_features

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        if args[5] == "val":
            out["G"][1, 0, 3] = float("nan")
        return out

    monkeypatch.setattr(features, "batch_features", poisoned)
    cfg, ws = _cfg(tiny_task_root, ["alpha"]), Workspace(tmp_path / "ws")
    with pytest.raises(GroupTuneError, match=r"task alpha, split val, row index \d+ .*'G'"):
        extract_features(cfg, ws)
    assert store_status(ws, cfg)["alpha"] == "partial (12/18)"


def test_k_above_d_is_refused(tiny_task_root, tmp_path):
    cfg = _cfg(tiny_task_root, ["alpha"], features={"k": 100000})
    with pytest.raises(GroupTuneError, match=r"features\.k.*larger than the gradient dimension"):
        extract_features(cfg, Workspace(tmp_path / "ws"))
