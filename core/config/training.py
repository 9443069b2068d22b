"""training: and ensemble: — the recipe every adapter is trained with, and how they are combined."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from core.config.section import Section


class TrainingConfig(Section):
    epochs: int = Field(
        10, ge=1, description="Maximum epochs (the paper trains 10 and keeps the best)."
    )
    patience: int | None = Field(
        2,
        ge=1,
        description="Stop after this many epochs without a better mean val NLL (early "
        "stopping; the same rule for groups and baseline). None: run every epoch.",
    )
    lr: float = Field(5e-4, gt=0)
    loss: Literal["choices", "vocab"] = Field(
        "choices",
        description="Cross-entropy of the gold answer over the task's answer words (choices: "
        "what the features and the estimator model) or over the full vocabulary (vocab).",
    )
    freeze_a: bool = Field(
        True,
        description="Keep the LoRA A matrices at their seeded init and train B only (LoRA-FA): "
        "the estimator's model family. False trains A too (plain LoRA).",
    )
    batch_size: int = Field(8, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(0)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    mix: dict[str, float] = Field(
        default_factory=dict,
        description="Sampling weight per task (default 1): an adapter's epoch keeps its row "
        "count and gives task t the share n_t·w_t / Σ n·w of it, so weights trade rows between "
        "tasks. Empty or equal weights: each task's rows once (core.recipe.epoch_plan).",
    )

    @field_validator("mix")
    @classmethod
    def _mix_weights(cls, v: dict) -> dict:
        bad = {t: w for t, w in v.items() if not (w >= 0 and w < float("inf"))}
        if bad:
            raise ValueError(f"weights must be finite and >= 0, got {bad}")
        return v


class EnsembleConfig(Section):
    weights: Literal["own", "fit"] = Field(
        "fit",
        description="fit: per-task weights over every group adapter, fitted on val (never worse "
        "than own there, pruned below 1e-3); own: each task uses its group's adapter only.",
    )
    boosting: int = Field(
        1,
        ge=0,
        le=32,
        description="b: boosting rounds after the group adapters, each a new adapter on the "
        "group the ensemble gets most wrong on its train rows (core.ensemble.boosting).",
    )
    boosting_method: Literal["auto", "features", "train"] = Field(
        "auto",
        description="features: fitted on the stored gradient features by the estimator's "
        "replay, no training; train: a real fine-tune on the ensemble's residual; auto: "
        "features when features.target is choices, else train.",
    )
