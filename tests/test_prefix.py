"""The frozen-prefix cache gives the full model's results, on disk, and declines what it cannot do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_tiny_experiment

from core.config import load_config
from core.data.prompts import encode_split
from core.data.sources import load_tasks
from core.gradients.store import load_features
from core.models import prefix
from core.models.adapters import attach_adapter
from core.models.loading import load_model
from core.models.scoring import choice_logits
from core.workspace import Workspace


def _setup(tmp_path, model="tiny-llama", **adapter):
    cfg = load_config(
        write_tiny_experiment(
            tmp_path,
            model={"name": model},
            adapter={"top_layers": 1, **adapter},
            training={"epochs": 2},
        )
    )
    return cfg, Workspace(tmp_path / "ws").ensure()


def _scored(cfg, ws, cached: bool, split="val"):
    model, tok = load_model(cfg.model)
    peft = attach_adapter(model, cfg.adapter)
    with torch.no_grad():  # a nonzero B, so the adapted layer matters
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    cache = prefix.attach(peft, cfg, ws) if cached else None
    task = load_tasks(cfg)[0]
    enc = encode_split(tok, task, split, cfg.data.max_tokens)
    return choice_logits(peft, tok, enc, batch_size=3), cache


def test_cached_scoring_equals_full_forward_and_reuses_disk(tmp_path):
    cfg, ws = _setup(tmp_path)
    full, none = _scored(cfg, ws, cached=False)
    fast, cache = _scored(cfg, ws, cached=True)
    assert none is None and cache is not None and cache.first == 1
    np.testing.assert_allclose(fast, full, atol=1e-5)
    files = list(ws.path("cache", "prefix").rglob("*.npy"))
    assert len(files) == 1 and files[0].name.startswith("reviews_a.val.")
    states = np.load(files[0])
    assert states.shape == (int(cache.loaded[next(iter(cache.loaded))].shape[0]), 64)
    assert cache.take_spent()["rows"] == 8
    acct = ws.read("accounting.json")["prefix_cache"]
    assert list(acct["parts"]) == [files[0].stem] and acct["examples"] == 8
    assert acct["flops"] > 0 and acct["tokens"] >= states.shape[0]
    again, cache2 = _scored(cfg, ws, cached=True)  # a new process would read the file
    np.testing.assert_allclose(again, full, atol=1e-5)
    assert cache2.take_spent()["rows"] == 0  # nothing recomputed


def test_4bit_states_built_while_scoring(tmp_path):
    """Test-split states are first needed inside scoring's inference_mode; with a 4-bit base the
    FLOP count of the lower layers probes a quantised layer with a backward pass there."""
    from core.models.flops import _PROBED

    _PROBED.clear()
    cfg, ws = _setup(tmp_path)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"quantization": "4bit"})})
    fast, cache = _scored(cfg, ws, cached=True, split="test")
    full, _ = _scored(cfg, ws, cached=False, split="test")
    assert cache is not None
    np.testing.assert_allclose(fast, full, atol=1e-4)
    assert ws.read("accounting.json")["prefix_cache"]["flops"] > 0


def test_changed_rows_replace_their_states(tmp_path):
    cfg, ws = _setup(tmp_path)
    _scored(cfg, ws, cached=True)
    old = next(ws.path("cache", "prefix").rglob("*.npy"))
    csv = tmp_path / "tasks" / "reviews_a" / "val.jsonl"
    csv.write_text(csv.read_text().replace("great", "superb"))
    assert "superb" in csv.read_text()
    _scored(cfg, ws, cached=True)
    files = list(ws.path("cache", "prefix").rglob("*.npy"))
    assert len(files) == 1 and files[0] != old


def test_damaged_states_are_computed_again(tmp_path, capsys):
    """A cut or foreign states file (disk full, a copy gone wrong) costs a recompute, not a run."""
    cfg, ws = _setup(tmp_path)
    full, _ = _scored(cfg, ws, cached=True)
    path = next(ws.path("cache", "prefix").rglob("*.npy"))
    path.write_bytes(path.read_bytes()[:200])
    again, cache = _scored(cfg, ws, cached=True)
    assert "unreadable cached states" in capsys.readouterr().err
    assert cache.take_spent()["rows"] == 8  # recomputed
    np.testing.assert_allclose(again, full, atol=1e-6)
    assert np.load(path).shape[1] == 64


def test_gpt2_declines_the_shortcut(tmp_path, capsys):
    """GPT-2 adds position embeddings to inputs_embeds: the probe sees it and keeps all layers."""
    cfg, ws = _setup(tmp_path, model="tiny-gpt2")
    fast, cache = _scored(cfg, ws, cached=True)
    assert cache is None and "frozen-prefix cache off" in capsys.readouterr().err
    full, _ = _scored(cfg, ws, cached=False)
    np.testing.assert_allclose(fast, full, atol=1e-6)


def test_off_without_top_layers_or_when_disabled(tmp_path):
    cfg, ws = _setup(tmp_path, cache_lower_layers=False)
    assert _scored(cfg, ws, cached=True)[1] is None
    cfg = cfg.model_copy(update={"adapter": cfg.adapter.model_copy(update={"top_layers": None})})
    assert _scored(cfg, ws, cached=True)[1] is None


def _train_and_extract(cfg, ws):
    from core.gradients.extract import extract_features
    from core.train.trainer import train_adapter

    extract_features(cfg, ws)
    record = train_adapter(cfg, ws, "g", ["reviews_a", "topics"], progress=False)
    from safetensors.torch import load_file

    weights = load_file(str(ws.adapter_dir("g") / "adapter_model.safetensors"))
    stores = {t.name: load_features(ws, t.name) for t in load_tasks(cfg)}
    return record, weights, stores


def test_features_and_training_match_the_full_path(tmp_path):
    """Same features (projected gradients) and the same trained adapter, within float noise."""
    cfg, ws_fast = _setup(tmp_path)
    slow_cfg = cfg.model_copy(
        update={"adapter": cfg.adapter.model_copy(update={"cache_lower_layers": False})}
    )
    ws_slow = Workspace(tmp_path / "slow").ensure()
    rec_f, w_f, st_f = _train_and_extract(cfg, ws_fast)
    rec_s, w_s, st_s = _train_and_extract(slow_cfg, ws_slow)
    assert list(ws_fast.path("cache", "prefix").rglob("*.npy"))
    assert not ws_slow.path("cache").exists()
    fields = ("train_h", "train_g", "val_z", "val_lse", "val_h", "val_G")
    for name in st_f:
        for key in fields:
            a, b = getattr(st_f[name], key), getattr(st_s[name], key)
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=f"{name} {key}")
    assert w_f.keys() == w_s.keys()
    for key in w_f:
        np.testing.assert_allclose(w_f[key].numpy(), w_s[key].numpy(), atol=1e-4, err_msg=key)
    va, vb = rec_f["val_metrics"]["mean"], rec_s["val_metrics"]["mean"]
    assert va["accuracy"] == vb["accuracy"]
    assert va["nll"] == pytest.approx(vb["nll"], rel=1e-4)
