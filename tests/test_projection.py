"""The JL projections: accuracy within the stated bound, reproducibility, blocks, transpose."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import ConfigError, GroupTuneError
from core.gradients import projection
from core.gradients.projection import make_projector

DIMS = [512, 1000, 88, 1400]  # D = 3000, uneven blocks like real LoRA layers
KINDS = ["countsketch", "rademacher"]


def _vectors(n: int, d: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    h = n // 2
    x[:h] += 0.7 * x[n - h :]  # some correlated pairs, not only near-orthogonal ones
    return x


@pytest.mark.parametrize("kind", KINDS)
def test_gram_error_within_jl_bound(kind):
    """Relative Gram error |<Πᵀx,Πᵀy> - <x,y>| / (|x||y|) has std <= sqrt(2/k) for both kinds.

    Bound tested at k = 400 (sqrt(2/k) = 0.071): RMS over all pairs and norms <= 1.5 sqrt(2/k),
    every single entry <= 5 sqrt(2/k).
    """
    k = 400
    proj = make_projector(kind, DIMS, k, seed=0)
    x = _vectors(24, proj.D)
    px = proj.project(x)
    assert px.shape == (24, k) and px.dtype == torch.float32
    gram, est = x @ x.T, px @ px.T
    norms = x.norm(dim=1)
    rel = (est - gram) / torch.outer(norms, norms)
    bound = math.sqrt(2 / k)
    assert rel.pow(2).mean().sqrt() <= 1.5 * bound
    assert rel.abs().max() <= 5 * bound


@pytest.mark.parametrize("kind", KINDS)
def test_unbiased_over_seeds(kind):
    """E[<Πᵀx, Πᵀy>] = <x, y>: averaged over 200 seeds at k = 16 the mean is close."""
    x = _vectors(2, 300, seed=3)
    exact = float(x[0] @ x[1])
    scale = float(x[0].norm() * x[1].norm())
    est = [
        float(p[0] @ p[1])
        for p in (make_projector(kind, [100, 200], 16, s).project(x) for s in range(200))
    ]
    # one estimate has std <= sqrt(2/16) * scale; the mean of 200 has it / sqrt(200)
    assert abs(sum(est) / len(est) - exact) <= 4 * math.sqrt(2 / 16) / math.sqrt(200) * scale


@pytest.mark.parametrize("kind", KINDS)
def test_regenerated_from_seed(kind):
    x = _vectors(5, 3000)
    a = make_projector(kind, DIMS, 64, seed=7).project(x)
    b = make_projector(kind, DIMS, 64, seed=7, cache_mb=0).project(x)  # no cache: regenerated
    c = make_projector(kind, DIMS, 64, seed=8).project(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_independent_of_order(kind):
    """A block's piece of Π depends only on (seed, block), not on which block came first."""
    x = _vectors(3, 3000)
    p1 = make_projector(kind, DIMS, 32, seed=2)
    p2 = make_projector(kind, DIMS, 32, seed=2)
    blocks = torch.split(x, DIMS, dim=1)
    first = [p1.project_block(i, b) for i, b in enumerate(blocks)]
    second = [p2.project_block(i, blocks[i]) for i in reversed(range(len(DIMS)))][::-1]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_blockwise_sum_equals_full(kind):
    proj = make_projector(kind, DIMS, 50, seed=0)
    x = _vectors(4, proj.D)
    parts = torch.split(x, DIMS, dim=1)
    summed = sum(proj.project_block(i, p) for i, p in enumerate(parts))
    torch.testing.assert_close(summed, proj.project(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_lift_is_transpose(kind, monkeypatch):
    """<Πᵀx, w> = <x, Πw>, also when a Rademacher block is generated in several chunks."""
    monkeypatch.setattr(projection, "_CHUNK_ENTRIES", 50 * 37)  # 37 rows per chunk at k = 50
    proj = make_projector(kind, DIMS, 50, seed=4)
    x = _vectors(3, proj.D).double()
    w = torch.randn(50, generator=torch.Generator().manual_seed(5))
    lifted = proj.lift(w)
    assert lifted.shape == (proj.D,)
    lhs = proj.project(x.float()).double() @ w.double()
    rhs = x @ lifted.double()
    torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-3)
    assert [p.numel() for p in proj.split(lifted)] == DIMS


def test_k_larger_than_d_is_a_clear_error():
    with pytest.raises(
        ConfigError,
        match=r"features\.k.*k=400 is larger than the gradient "
        r"dimension D=256",
    ):
        make_projector("countsketch", [128, 128], 400)
    with pytest.raises(GroupTuneError, match="features.projection"):
        make_projector("gaussian", [128], 10)
    with pytest.raises(GroupTuneError, match="features.k"):
        make_projector("rademacher", [128], 0)


def test_bad_block_width_is_refused():
    proj = make_projector("countsketch", DIMS, 8)
    with pytest.raises(ValueError, match="block 1 has 1000 entries"):
        proj.project_block(1, torch.zeros(2, 999))
    with pytest.raises(ValueError, match=r"shape \(batch, 3000\)"):
        proj.project(torch.zeros(2, 10))
