"""Johnson-Lindenstrauss projections of LoRA-B gradients, regenerated from a seed, never stored.

A projection is a D x k matrix Π (D = total number of LoRA B entries, in `lora_b_parameters`
order, split into blocks of sizes `dims`). Features are g̃ = Πᵀ g (k,), and an update estimated
in feature space maps back to adapter weights as Π w (D,) (`lift`). Both kinds are scaled so that
E[<Πᵀx, Πᵀy>] = <x, y>; the relative error of an inner product is about sqrt(2/k) of the
product of the norms (one standard deviation), e.g. ~0.07 at k = 400.

Kinds:
  * "countsketch" (default): coordinate j goes to one bucket b(j) in [0, k) with a sign s(j) =
    ±1, so Π[j, b(j)] = s(j) and every other entry is 0. Applying it is one `index_add_` per
    block: O(D) work for any k.
  * "rademacher": Π[j, b] = ±1/sqrt(k), i.i.d. O(D k) work, generated in row chunks.
  * "identity": no projection, k = D (features.k is ignored). Exact, and the only kind under
    which an Adam replay of the training recipe in feature space is Adam on the real B
    coordinates (Adam's per-coordinate scaling does not pass through a sketch); costs k = D
    floats per row, so it suits adapters of up to ~10^5 B entries (top layers, small r).

Each block (and each chunk of a block) has its own generator, seeded from (seed, kind, block,
chunk) through numpy's SeedSequence, so a block's matrix is the same whichever block is asked
for first, on any machine. Generated blocks are cached in memory up to a budget.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from core.errors import ConfigError

KINDS = ("countsketch", "rademacher", "identity")
FORMAT_VERSION = 1
_CHUNK_ENTRIES = 1 << 22  # rows x k entries generated per chunk of a Rademacher block (16 MiB)


def _block_seed(seed: int, kind: str, block: int, chunk: int = 0) -> int:
    """A 63-bit seed derived from (seed, kind, block, chunk): independent, reproducible streams."""
    tag = KINDS.index(kind)
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, tag, block, chunk]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


class Projector:
    """Πᵀ applied block by block. Subclasses generate one block's piece of Π from the seed."""

    kind = ""

    def __init__(self, dims: list[int], k: int, seed: int = 0, cache_mb: float = 256.0):
        dims = [int(d) for d in dims]
        if not dims or any(d < 1 for d in dims):
            raise ConfigError(f"projection needs positive block sizes, got {dims[:8]}")
        self.dims = dims
        self.D = int(sum(dims))
        self.k = int(k)
        self.seed = int(seed)
        if self.k < 1:
            raise ConfigError(f"field 'features.k': must be at least 1, got {self.k}")
        if self.k > self.D:
            raise ConfigError(
                f"field 'features.k': k={self.k} is larger than the gradient dimension "
                f"D={self.D} (the number of LoRA B entries); lower features.k or adapt more "
                "modules/layers"
            )
        self.offsets = np.concatenate([[0], np.cumsum(dims)]).astype(np.int64)
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes = 0
        self._budget = int(cache_mb * 2**20)

    def fingerprint(self) -> dict:
        return {
            "kind": self.kind,
            "k": self.k,
            "seed": self.seed,
            "D": self.D,
            "version": FORMAT_VERSION,
        }

    # --- cache ---------------------------------------------------------------------------------
    def _cached(self, key, make):
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = make()
        size = sum(t.numel() * t.element_size() for t in value)
        if size <= self._budget:
            self._cache[key] = value
            self._cache_bytes += size
            while self._cache_bytes > self._budget:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= sum(t.numel() * t.element_size() for t in old)
        return value

    def _check_block(self, i: int, d: int) -> None:
        if not 0 <= i < len(self.dims):
            raise IndexError(f"block {i} out of range (0..{len(self.dims) - 1})")
        if d != self.dims[i]:
            raise ValueError(f"block {i} has {self.dims[i]} entries, got gradients of width {d}")

    # --- the maps -------------------------------------------------------------------------------
    def project_block(self, i: int, grads: torch.Tensor) -> torch.Tensor:
        """Πᵢᵀ for block i: (batch, dims[i]) -> (batch, k), float32, on the grads' device."""
        raise NotImplementedError

    def lift_block(self, i: int, w: torch.Tensor) -> torch.Tensor:
        """Πᵢ w for block i: (k,) -> (dims[i],), float32."""
        raise NotImplementedError

    def project(self, full) -> torch.Tensor:
        """Πᵀ x for full gradients (batch, D) -> (batch, k); the sum of the blocks' projections."""
        full = torch.as_tensor(full)
        if full.ndim != 2 or full.shape[1] != self.D:
            raise ValueError(
                f"expected gradients of shape (batch, {self.D}), got {tuple(full.shape)}"
            )
        out = torch.zeros(full.shape[0], self.k, dtype=torch.float32, device=full.device)
        for i in range(len(self.dims)):
            out += self.project_block(i, full[:, self.offsets[i] : self.offsets[i + 1]])
        return out

    def lift(self, w) -> torch.Tensor:
        """Π w: a feature-space vector (k,) mapped to LoRA-B coordinates (D,), float32.

        The transpose of `project`: <Πᵀx, w> = <x, Πw>. Split the result with `split`.
        """
        w = torch.as_tensor(w, dtype=torch.float32)
        if w.shape != (self.k,):
            raise ValueError(f"expected a vector of shape ({self.k},), got {tuple(w.shape)}")
        return torch.cat([self.lift_block(i, w) for i in range(len(self.dims))])

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A (D,) vector cut into the per-block pieces (dims[i],), lora_b_parameters order."""
        return list(torch.split(flat, self.dims))


class CountSketch(Projector):
    kind = "countsketch"

    def _hash(self, i: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        def make():
            g = _generator(_block_seed(self.seed, self.kind, i))
            bucket = torch.randint(0, self.k, (self.dims[i],), generator=g)
            sign = torch.randint(0, 2, (self.dims[i],), generator=g).float().mul_(2).sub_(1)
            return bucket.to(device), sign.to(device)

        return self._cached((i, str(device)), make)

    def project_block(self, i: int, grads: torch.Tensor) -> torch.Tensor:
        self._check_block(i, grads.shape[-1])
        bucket, sign = self._hash(i, grads.device)
        out = torch.zeros(grads.shape[0], self.k, dtype=torch.float32, device=grads.device)
        return out.index_add_(1, bucket, grads.float() * sign)

    def lift_block(self, i: int, w: torch.Tensor) -> torch.Tensor:
        bucket, sign = self._hash(i, w.device)
        return w[bucket] * sign


class Rademacher(Projector):
    kind = "rademacher"

    def _rows_per_chunk(self) -> int:
        return max(1, _CHUNK_ENTRIES // self.k)

    def _chunk(self, i: int, c: int, device) -> torch.Tensor:
        """Rows [c*R, (c+1)*R) of block i's (dims[i], k) matrix of ±1/sqrt(k)."""

        def make():
            rows = self._rows_per_chunk()
            n = min(rows, self.dims[i] - c * rows)
            g = _generator(_block_seed(self.seed, self.kind, i, c))
            m = torch.randint(0, 2, (n, self.k), generator=g).float()
            return (m.mul_(2).sub_(1).mul_(self.k**-0.5).to(device),)

        return self._cached((i, c, str(device)), make)[0]

    def _chunks(self, i: int):
        rows = self._rows_per_chunk()
        for c in range((self.dims[i] + rows - 1) // rows):
            yield c, slice(c * rows, min((c + 1) * rows, self.dims[i]))

    def project_block(self, i: int, grads: torch.Tensor) -> torch.Tensor:
        self._check_block(i, grads.shape[-1])
        grads = grads.float()
        out = torch.zeros(grads.shape[0], self.k, dtype=torch.float32, device=grads.device)
        for c, rows in self._chunks(i):
            out += grads[:, rows] @ self._chunk(i, c, grads.device)
        return out

    def lift_block(self, i: int, w: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._chunk(i, c, w.device) @ w for c, _ in self._chunks(i)])


class Identity(Projector):
    """No projection: Π is the D x D identity, so g̃ = g and Π w = w (k is always D)."""

    kind = "identity"

    def __init__(self, dims: list[int], k: int | None = None, seed: int = 0, **kwargs):
        super().__init__(dims, int(sum(int(d) for d in dims)), seed, **kwargs)

    def project_block(self, i: int, grads: torch.Tensor) -> torch.Tensor:
        self._check_block(i, grads.shape[-1])
        out = torch.zeros(grads.shape[0], self.k, dtype=torch.float32, device=grads.device)
        out[:, self.offsets[i] : self.offsets[i + 1]] = grads.float()
        return out

    def lift_block(self, i: int, w: torch.Tensor) -> torch.Tensor:
        return w[self.offsets[i] : self.offsets[i + 1]].float()


def projector_for(features, dims: list[int], **kwargs) -> Projector:
    """The projection a FeaturesConfig asks for, for LoRA-B blocks of sizes `dims` ("auto"
    and a missing k resolved by FeaturesConfig.resolved)."""
    kind, k = features.resolved(sum(dims))
    return make_projector(kind, dims, k, features.seed, **kwargs)


def make_projector(kind: str, dims: list[int], k: int, seed: int = 0, **kwargs) -> Projector:
    """The projection of `kind` for LoRA-B blocks of sizes `dims` (lora_b_parameters order).

    Raises ConfigError naming features.k when k > D = sum(dims) (identity: k is D).
    """
    classes = {"countsketch": CountSketch, "rademacher": Rademacher, "identity": Identity}
    if kind not in classes:
        raise ConfigError(f"field 'features.projection': {kind!r} is not one of {', '.join(KINDS)}")
    return classes[kind](dims, k, seed, **kwargs)
