"""The pipeline's stages, in order: one table that the pipeline, the accounting, the report, the
dashboard's stage view and the pages read, so the stages have one name each.

Each stage says what it writes (workspace paths), its `grouptune` command, the job step it runs
as, which accounting entries its cost goes to, and which function decides whether its output
is fresh: the engine's own rule, torch-free, that the dashboard calls too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    label: str  # as the dashboard shows it
    verb: str  # the `grouptune` command that does it
    outputs: tuple[str, ...]  # workspace paths (core.workspace has the layout)
    costs: tuple[str, ...] = ()  # accounting.json entries its FLOPs and time go to
    freshness: str = ""  # the rule that says fresh / stale / missing (module:function)

    @property
    def job(self) -> str:
        """The job step name (`<verb>` or `<verb>:<item>`, e.g. train:group-0)."""
        return self.verb


STAGES: tuple[Stage, ...] = (
    Stage(
        "gradients",
        "Gradient features, per task",
        "gradients",
        ("features/<task>/",),
        ("gradients", "prefix_cache"),
        "core.gradients.store:store_status",
    ),
    Stage(
        "affinity",
        "Task affinity matrix",
        "affinity",
        ("estimates/", "affinity.json"),
        ("estimation",),
        "core.estimate.affinity:table_fingerprint",
    ),
    Stage(
        "grouping", "Task groups", "group", ("groupings/",), (), "core.views.stages:grouping_state"
    ),
    Stage(
        "training",
        "Adapters (one per group + baseline)",
        "train",
        ("adapters/group-<i>/", "adapters/baseline/", "ensemble.json"),
        ("group_training", "baseline_training"),
        "core.recipe:training_fingerprint",
    ),
    Stage(
        "boosting",
        "Ensemble weights and boosting rounds",
        "boost",
        ("adapters/boost-<r>/", "ensemble.json"),
        ("ensemble_weights", "boosting"),
        "core.ensemble.boosting:missing_rounds",
    ),
    Stage(
        "evaluation",
        "Test evaluation",
        "evaluate",
        ("eval/",),
        ("ensemble_inference", "baseline_inference"),
        "core.views.stages:evaluation_states",
    ),
    Stage(
        "report",
        "Comparison report",
        "report",
        ("report.json",),
        (),
        "core.views.stages:report_state",
    ),
)
BY_NAME = {s.name: s for s in STAGES}
# every accounting entry, in pipeline order (core.accounting refuses any other)
COSTS: tuple[str, ...] = tuple(c for s in STAGES for c in s.costs)
