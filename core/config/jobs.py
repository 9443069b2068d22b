"""jobs: — what each step's jobs ask of the backend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config.section import Section

MODEL_STEPS = ("gradients", "train", "boost", "evaluate")  # the steps that run the model
JOB_STEPS = ("gradients", "affinity", "group", *MODEL_STEPS[1:], "report")


class StepResources(Section):
    cpus: float = Field(1, gt=0, description="CPUs per job (also its torch threads).")
    gpus: float = Field(0, ge=0, description="GPUs per job; a fraction shares one.")
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources per job, e.g. {accelerator_type:A100: 0.001} or a "
        "resource your nodes declare (ray start --resources); the local backend ignores them.",
    )


class JobsConfig(Section):
    resources: dict[Literal[JOB_STEPS], StepResources] = Field(
        default_factory=dict,
        description="What each step's jobs ask of the backend, by step (gradients, affinity, "
        "group, train, boost, evaluate, report). Unset: 1 CPU, and 1 GPU for the model steps "
        "(gradients, train, boost, evaluate) when the machine or the Ray cluster has GPUs.",
    )
    reuse_workers: bool = Field(
        False,
        description="Local backend: a worker that finishes a job runs the next ready job of "
        "the workspace itself, so the chain pays process start and imports once. Off: one "
        "fresh process per job, the robust default (nothing a step leaves in memory lasts).",
    )
