"""The CUDA paths, on the built-in tiny models (no download, no Hub): training steps in fp32 and
bf16, features against the per-example reference, peak-memory accounting, and a resumed run
with the CUDA RNG in its checkpoint. `scripts/gpu_check.sh` runs them (`pytest -m gpu`); on a
machine without CUDA they skip, saying so. 4-bit needs bitsandbytes with CUDA: skipped without.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_cfg, make_tasks

from core.accounting import Meter
from core.config import AdapterConfig, ModelConfig
from core.data.prompts import pad_batch
from core.gradients.per_example import (
    batch_features,
    prepare_for_extraction,
    reference_example_grads,
)
from core.models.adapters import attach_adapter, lora_b_parameters
from core.models.loading import load_model
from core.workspace import Workspace

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
TEXTS = ["The food was great", "Terrible service, never again", "ok", "Friendly staff, good price"]
WORDS = [" positive", " negative", " neutral"]
GOLD = np.array([0, 1, 2, 0])


def _model(dtype: str, quantization: str = "none"):
    cfg = ModelConfig(name="tiny-llama", quantization=quantization, device="cuda", dtype=dtype)
    return load_model(cfg)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_lora_training_step_on_cuda(dtype):
    model, tok = _model(dtype)
    pm = attach_adapter(model, AdapterConfig(r=4))
    assert next(pm.parameters()).device.type == "cuda"
    enc = tok(TEXTS, return_tensors="pt", padding=True).to("cuda")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    loss = pm(**enc, labels=labels).loss
    loss.backward()
    assert math.isfinite(loss.item())
    grads = [p.grad for _, p in lora_b_parameters(pm)]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(("dtype", "rtol"), [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_features_match_the_per_example_reference_on_cuda(dtype, rtol):
    model, tok = _model(dtype)
    pm = attach_adapter(model, AdapterConfig(r=4, alpha=8, seed=0))
    prepare_for_extraction(pm)
    ids = [tok.encode(t) for t in TEXTS]
    choice = [tok.encode(w)[0] for w in WORDS]
    batch = pad_batch(ids, tok.pad_token_id, torch.device("cuda"))
    for target, split in [("choices", "train"), ("vocab", "val")]:
        fast = batch_features(pm, batch, choice, GOLD, target, split)
        ref = reference_example_grads(pm, ids, choice, GOLD, target, split)
        for key in fast:
            got = fast[key].double().cpu().numpy()
            err = np.linalg.norm(got - ref[key]) / max(np.linalg.norm(ref[key]), 1e-12)
            assert err < rtol, f"{dtype} {target}/{split} {key}: relative error {err:.3g}"


def test_peak_memory_is_measured_on_cuda():
    with Meter("cuda") as meter:
        x = torch.ones(1024, 1024, device="cuda")  # 4 MiB
        del x
    assert meter.peak_memory()["peak_memory_bytes"] >= 4 * 2**20


def test_4bit_on_cuda():
    bnb = pytest.importorskip("bitsandbytes", reason="4-bit needs bitsandbytes")
    model, _ = _model("bfloat16", "4bit")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_a_resumed_cuda_run_ends_bit_identical(tmp_path):
    """Dropout on CUDA draws from the CUDA RNG: the checkpoint must carry it."""
    from core.train.trainer import train_adapter

    make_tasks(tmp_path)
    sections = {"model": {"device": "cuda"}, "adapter": {"dropout": 0.1}}
    cfg = make_cfg(tmp_path, "tiny-llama", **sections)  # 2 epochs
    whole = Workspace(tmp_path / "whole").ensure()
    train_adapter(cfg, whole, "baseline", ["alpha", "beta"], progress=False)
    parts = Workspace(tmp_path / "parts").ensure()
    one = make_cfg(tmp_path, "tiny-llama", **sections, training={"epochs": 1})
    train_adapter(one, parts, "baseline", ["alpha", "beta"], progress=False)
    train_adapter(cfg, parts, "baseline", ["alpha", "beta"], progress=False)  # resumes epoch 2
    a = (whole.adapter_dir("baseline") / "adapter_model.safetensors").read_bytes()
    b = (parts.adapter_dir("baseline") / "adapter_model.safetensors").read_bytes()
    assert a == b
    metrics = [
        json.loads(line) for line in (parts.adapter_dir("baseline") / "metrics.jsonl").open()
    ]
    assert metrics and all(math.isfinite(m.get("loss", 0.0)) for m in metrics)
