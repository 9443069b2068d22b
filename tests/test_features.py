"""The hook-based per-example gradients against the slow exact reference, on tiny real models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.config import AdapterConfig, ModelConfig
from core.data.prompts import pad_batch
from core.gradients.per_example import (
    batch_features,
    feature_dims,
    prepare_for_extraction,
    reference_example_grads,
    target_quantities,
)
from core.gradients.projection import make_projector
from core.models.adapters import attach_adapter, lora_b_parameters
from core.models.loading import load_model
from core.models.tiny import build_tiny_model

TEXTS = [
    "The food was great",
    "Terrible service and the bread was bad, never again, I hate this place",
    "ok",
    "The staff were friendly and the price was good",
]
WORDS = [" positive", " negative", " neutral"]
GOLD = np.array([0, 1, 2, 0])
CASES = [(t, s) for t in ("choices", "vocab") for s in ("train", "val")]


def _prepare(model, tok, random_b: bool = False):
    peft_model = attach_adapter(model, AdapterConfig(r=4, alpha=8, seed=0))
    prepare_for_extraction(peft_model)
    if random_b:  # exactness must not depend on B = 0
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _, p in lora_b_parameters(peft_model):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    ids = [tok.encode(t) for t in TEXTS]
    choice = [tok.encode(w)[0] for w in WORDS]
    assert len({len(i) for i in ids}) == len(ids)  # every row padded differently
    return peft_model, ids, choice, pad_batch(ids, tok.pad_token_id)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def fp32(request):
    return _prepare(*build_tiny_model(request.param))


def _close(fast: torch.Tensor, ref: np.ndarray, rtol: float) -> None:
    """Elementwise (rtol, atol = rtol * largest |ref|)."""
    ref_t = torch.as_tensor(ref, dtype=torch.float64)
    atol = rtol * max(float(ref_t.abs().max()), 1e-3)
    torch.testing.assert_close(fast.double(), ref_t, rtol=rtol, atol=atol)


@pytest.mark.parametrize(("target", "split"), CASES)
def test_fast_path_matches_reference_fp32(fp32, target, split):
    peft_model, ids, choice, batch = fp32
    fast = batch_features(peft_model, batch, choice, GOLD, target, split)
    ref = reference_example_grads(peft_model, ids, choice, GOLD, target, split)
    expected = {"train": {"h", "g"}, "val": {"z", "lse", "h", "G"}}[split]
    expected |= {"Glse"} if (split, target) == ("val", "vocab") else set()
    if (split, target) == ("train", "choices") and len(
        WORDS
    ) > 2:  # core.gradients.store.per_choice_train
        expected |= {"z", "G"}
    assert set(fast) == set(ref) == expected
    D = sum(feature_dims(peft_model))
    if split == "val":
        assert fast["G"].shape == (len(ids), len(WORDS), D)
    for name in fast:
        _close(fast[name], ref[name], rtol=1e-4)


def test_fast_path_exact_at_nonzero_b():
    peft_model, ids, choice, batch = _prepare(*build_tiny_model("tiny-llama"), random_b=True)
    fast = batch_features(peft_model, batch, choice, GOLD, "vocab", "val")
    ref = reference_example_grads(peft_model, ids, choice, GOLD, "vocab", "val")
    for name in fast:
        _close(fast[name], ref[name], rtol=1e-4)


@pytest.mark.parametrize("kind", ["countsketch", "rademacher"])
def test_projected_blocks_equal_projected_reference(fp32, kind):
    peft_model, ids, choice, batch = fp32
    proj = make_projector(kind, feature_dims(peft_model), 64, seed=3)
    fast = batch_features(peft_model, batch, choice, GOLD, "vocab", "val", proj)
    ref = reference_example_grads(peft_model, ids, choice, GOLD, "vocab", "val")
    G = torch.as_tensor(ref["G"], dtype=torch.float32)
    _close(fast["G"], proj.project(G.reshape(-1, proj.D)).reshape(len(ids), -1, 64), 1e-4)
    _close(fast["Glse"], proj.project(torch.as_tensor(ref["Glse"], dtype=torch.float32)), 1e-4)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize(("quantization", "dtype"), [("none", "bfloat16"), ("4bit", "float32")])
def test_fast_path_low_precision(name, quantization, dtype, tmp_path, monkeypatch):
    """bf16 and 4-bit NF4 bases: the same within low-precision noise (padding changes rounding)."""
    monkeypatch.setenv("GROUPTUNE_CACHE", str(tmp_path))
    cfg = ModelConfig(name=name, quantization=quantization, dtype=dtype, device="cpu")
    peft_model, ids, choice, batch = _prepare(*load_model(cfg))
    assert not getattr(peft_model.get_base_model(), "_require_grads_hooks", None)  # kbit hook off
    for target, split in [("choices", "train"), ("vocab", "val")]:
        fast = batch_features(peft_model, batch, choice, GOLD, target, split)
        ref = reference_example_grads(peft_model, ids, choice, GOLD, target, split)
        for key in fast:
            err = np.linalg.norm(fast[key].double().numpy() - ref[key]) / np.linalg.norm(ref[key])
            assert err < 3e-2, f"{key}: relative error {err:.3g}"


def _b_step(peft_model, delta: torch.Tensor) -> None:
    with torch.no_grad():
        params = [p for _, p in lora_b_parameters(peft_model)]
        for p, d in zip(params, torch.split(delta, [p.numel() for p in params]), strict=True):
            p.add_(d.view_as(p))


@pytest.mark.parametrize("target", ["choices", "vocab"])
def test_gradient_predicts_change_to_first_order(fp32, target):
    """<g, ΔB> matches the real change of h (and of z, lse) from a forward pass, and the
    mismatch shrinks ~4x when the step halves (second-order remainder)."""
    peft_model, ids, choice, batch = fp32
    fast = batch_features(peft_model, batch, choice, GOLD, target, "val")
    g = batch_features(peft_model, batch, choice, GOLD, target, "train")["g"].double()
    D = g.shape[1]
    direction = torch.randn(D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def values_after(step: float) -> dict:
        delta = (step * direction / direction.norm()).float()
        _b_step(peft_model, delta)
        with torch.no_grad():
            logits = peft_model(**batch, logits_to_keep=1).logits[:, -1]
            out = target_quantities(logits, torch.tensor(choice), torch.tensor(GOLD), target)
        _b_step(peft_model, -delta)
        return out

    errors = []
    for step in (0.04, 0.02):
        d = step * direction / direction.norm()
        after = values_after(step)
        for name, grad in (("h", g), ("z", fast["G"].double())):
            pred, real = grad @ d, after[name].double() - fast[name].double()
            assert float(real.abs().max()) > 1e-4  # a visible change, not float noise
            assert float((pred - real).norm() / real.norm()) < 0.1, name
        errors.append(float((g @ d - (after["h"].double() - fast["h"].double())).norm()))
    assert errors[1] < errors[0] / 3  # the remainder is second order: ~4x smaller


@pytest.mark.parametrize("target", ["choices", "vocab"])
def test_target_formula(target):
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 30.0, -30.0, 1.0]])
    choice, gold = torch.tensor([0, 1, 2]), torch.tensor([0, 1])
    q = target_quantities(logits, choice, gold, target)
    lg = logits.double().numpy()
    pool = lg[:, :3] if target == "choices" else lg
    p = np.exp(pool - pool.max(1, keepdims=True))
    p = p / p.sum(1, keepdims=True)
    p = np.clip(p[np.arange(2), gold.numpy()], 1e-6, 1 - 1e-6)
    np.testing.assert_allclose(q["h"].numpy(), np.log(p / (1 - p)), rtol=1e-5, atol=1e-5)
    assert math.isclose(float(q["h"][1]), math.log((1 - 1e-6) / 1e-6), rel_tol=1e-5)  # clamped
    np.testing.assert_allclose(q["z"].numpy(), lg[:, :3])


def test_only_b_is_trainable_and_dropout_off():
    model, _ = build_tiny_model("tiny-gpt2")
    peft_model = attach_adapter(model, AdapterConfig(r=2, alpha=4, dropout=0.5, seed=0))
    prepare_for_extraction(peft_model)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in lora_b_parameters(peft_model)}
    assert not any(m.training for m in peft_model.modules())


def test_checkpointing_is_turned_off():
    """Recomputed forwards would fire the capture hooks twice: extraction turns it off."""
    model, tok = build_tiny_model("tiny-llama")
    model.gradient_checkpointing_enable()
    peft_model, ids, choice, batch = _prepare(model, tok)
    assert not peft_model.get_base_model().is_activation_checkpointing
    fast = batch_features(peft_model, batch, choice, GOLD, "choices", "train")
    ref = reference_example_grads(peft_model, ids, choice, GOLD, "choices", "train")
    _close(fast["g"], ref["g"], rtol=1e-4)
