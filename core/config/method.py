"""features:, estimator: and grouping: — the method's own steps (gradients, estimate, group)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config.section import Section

# "auto" projection: exact B-gradients (identity, k = D) while D is at most IDENTITY_MAX_DIMS;
# above it a store row (4·D bytes per answer word) and the replay's steps (O(D)) grow past a
# laptop's budget, and a CountSketch of AUTO_SKETCH_K dimensions is used instead
# (bench/scaling.py: store bytes per row and replay seconds against D; bench/agreement.py:
# what the sketch costs in agreement).
IDENTITY_MAX_DIMS = 65_536
AUTO_SKETCH_K = 4096
PROJECTIONS = ("auto", "identity", "countsketch", "rademacher")


class FeaturesConfig(Section):
    target: Literal["choices", "vocab"] = Field(
        "choices",
        description="h = log-odds of the gold answer among the task's answer words (choices) "
        "or over the full vocabulary (vocab, as in the paper).",
    )
    projection: Literal[PROJECTIONS] = Field(
        "auto",
        description="auto: exact B-gradients (identity, k = D) up to D = 65,536 B entries, "
        "else a CountSketch of k = 4096; identity: always exact (the replay is then AdamW on "
        "the real B weights); countsketch, rademacher: a JL sketch of k dimensions.",
    )
    k: int | None = Field(
        None,
        ge=1,
        description="Sketch dimension (countsketch, rademacher; None: 4096). Identity ignores it.",
    )
    seed: int = Field(
        0, description="Projection seed (the projection is regenerated, never stored)."
    )
    batch_size: int = Field(16, ge=1)

    def resolved(self, dims: int) -> tuple[str, int | None]:
        """(kind, k) for an adapter of `dims` B entries: what "auto" and a missing k mean.
        Deterministic in the model and adapter, which a feature store's key already holds."""
        kind = self.projection
        if kind == "auto":
            kind = "identity" if dims <= IDENTITY_MAX_DIMS else "countsketch"
        return kind, None if kind == "identity" else (self.k or AUTO_SKETCH_K)


class EstimatorConfig(Section):
    method: str = Field(
        "replay",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="A name in core.estimate.methods. replay: the training recipe (batches, "
        "AdamW, lr curve, epochs, best-epoch rule) replayed on the linearised model "
        "(core.estimate.replay; bench/agreement.py); argmin: the paper's regularised fit with "
        "a trust region (reg, max_norm).",
    )
    reg: float | None = Field(
        None,
        gt=0,
        description="L2 strength lambda. None: calibrated so the update norm equals max_norm.",
    )
    max_norm: float = Field(
        0.1,
        gt=0,
        description="argmin only: the fitted update's norm ‖w‖ is capped at this value.",
    )
    orders: int = Field(
        8,
        ge=1,
        le=256,
        description="replay only: batch orders (training seeds no real run uses) the replay is "
        "averaged over, so the estimate is of the expected fine-tune, not of one seed's run "
        "(bench/agreement.py).",
    )
    subsets: int = Field(30, ge=1, description="K: number of sampled subsets.")
    subset_size: int = Field(3, ge=2, description="Tasks per sampled subset.")
    pairs: bool = Field(False, description="Score all pairs instead of sampling subsets.")
    metric: Literal["loss", "accuracy"] = Field("loss")
    seed: int = Field(0)


class GroupingConfig(Section):
    method: str = Field(
        "sdp",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="A name in core.grouping.methods: sdp, spectral (both swept for every m) "
        "or random (a control: needs m).",
    )
    m: int | None = Field(
        None, ge=1, description="Number of groups (None: recommended from the sweep)."
    )
    seed: int = Field(0)
