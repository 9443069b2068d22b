"""The pipeline's stages, in order: one table that the pipeline, the accounting, the report, the
dashboard's stage view and the pages read, so the stages have one name each.

Each stage says what it writes (workspace paths), its `grouptune` command, the job step it runs
as, which accounting entries its cost goes to, and which function decides whether its output
is fresh: the engine's own rule, torch-free, that the dashboard calls too.

`command(verb, ...)` is the one place a `grouptune` command line is spelled: the pipeline, the
jobs the pages and the CLI queue, and the commands the pages show all build their argv with it
(tests/test_stages.py checks that nothing else does, and that every verb it is given exists).
`Stage.argv(item)` is a stage's command for one unit of its work (a task, an adapter, a round).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.artifacts import AFFINITY, MANIFEST, REPORT


@dataclass(frozen=True)
class Stage:
    name: str
    label: str  # as the dashboard shows it
    verb: str  # the `grouptune` command that does it
    outputs: tuple[str, ...]  # workspace paths (core.workspace has the layout)
    costs: tuple[str, ...] = ()  # accounting.json entries its FLOPs and time go to
    freshness: str = ""  # the rule that says fresh / stale / missing (module:function)
    item_option: str | None = None  # the option naming one unit of its work (None: one job)

    def argv(self, item: str | None = None) -> list[str]:
        """The command that does this stage for `item` (all of it with no item)."""
        if item is None or self.item_option is None:
            return command(self.verb)
        return command(self.verb, **{self.item_option: item})

    def job(self, item: str | None = None) -> str:
        """The job step name (`<verb>` or `<verb>:<item>`, e.g. train:group-0)."""
        return self.verb if item is None else f"{self.verb}:{item}"


def command(verb: str, *args, **options) -> list[str]:
    """`grouptune <verb> <args> <options>` as an argv (without the program's name).

    An option `name=value` is `--name value` (underscores become dashes); True is a bare flag,
    False and None leave it out, and a list or tuple repeats the option once per value."""
    argv = [verb, *map(str, args)]
    for name, value in options.items():
        flag = "--" + name.rstrip("_").replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [w for v in value for w in (flag, str(v))]
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return argv


STAGES: tuple[Stage, ...] = (
    Stage(
        "gradients",
        "Gradient features, per task",
        "gradients",
        ("features/<task>/",),
        ("gradients", "prefix_cache"),
        "core.gradients.store:store_status",
        "task",
    ),
    Stage(
        "affinity",
        "Task affinity matrix",
        "affinity",
        ("estimates/", AFFINITY.name),
        ("estimation",),
        "core.estimate.affinity:affinity_status",
    ),
    Stage(
        "grouping",
        "Task groups",
        "group",
        ("groupings/",),
        (),
        "core.grouping.freshness:grouping_status",
    ),
    Stage(
        "training",
        "Adapters (one per group + baseline)",
        "train",
        ("adapters/group-<i>/", "adapters/baseline/", MANIFEST.name),
        ("group_training", "baseline_training"),
        "core.train.freshness:adapter_status",
        "adapter",
    ),
    Stage(
        "boosting",
        "Ensemble weights and boosting rounds",
        "boost",
        ("adapters/boost-<r>/", MANIFEST.name),
        ("ensemble_weights", "boosting"),
        "core.ensemble.boosting:missing_rounds",
        "round",
    ),
    Stage(
        "evaluation",
        "Test evaluation",
        "evaluate",
        ("eval/",),
        ("ensemble_inference", "baseline_inference"),
        "core.train.eval_status:eval_status",
    ),
    Stage(
        "report",
        "Comparison report",
        "report",
        (REPORT.name,),
        (),
        "core.report.freshness:report_status",
    ),
)
BY_NAME = {s.name: s for s in STAGES}
# every accounting entry, in pipeline order (core.accounting refuses any other)
COSTS: tuple[str, ...] = tuple(c for s in STAGES for c in s.costs)
