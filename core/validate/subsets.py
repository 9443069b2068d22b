"""Which subsets validate-estimate fine-tunes (spread over the tasks, from those the affinity step estimated), and the fine-tunes themselves: one job per subset and seed, adapters named subset-<hash>[-s<seed>]."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pandas as pd

from core.artifacts import SUBSETS
from core.errors import DataError, GroupTuneError, StaleError
from core.io import safe_name
from core.stages import command

ROOT = Path(__file__).resolve().parents[2]  # the project folder (core/<step>/this.py)


PREFIX = "subset-"


SEP = "+"  # as in estimates/results.csv (core.estimate.affinity.SEP)


# 8 subsets of 3 over 6 tasks give each task 4, so about 36 same-task pairs: enough for an
# agreement figure worth reading (core.validate.trust.MIN_PAIRS); 3 seeds each, 24 fine-tunes
DEFAULT_SUBSETS = 8


DEFAULT_SEEDS = 3  # the estimate is scored against their mean; one against the others: the ceiling


def adapter_name(tasks, seed: int | None = None) -> str:
    """`subset-<8 hex>`: one name per set of tasks (order-free), always a safe folder name;
    `subset-<8 hex>-s<seed>` for a fine-tune with another training seed than the config's."""
    digest = hashlib.sha256(SEP.join(sorted(tasks)).encode()).hexdigest()[:8]
    suffix = "" if seed is None else f"-s{int(seed)}"
    return safe_name(PREFIX + digest + suffix, "adapter name")


def seeds_of(cfg, n_seeds: int) -> list[int]:
    """The training seeds of a validation: the config's, then the next ones."""
    if n_seeds < 1:
        raise GroupTuneError(f"--seeds must be at least 1, got {n_seeds}")
    return [cfg.training.seed + i for i in range(n_seeds)]


def seeded(cfg, seed: int):
    """cfg with training.seed = seed (adapter.seed, the features' expansion point, stays)."""
    return cfg.model_copy(update={"training": cfg.training.model_copy(update={"seed": seed})})


def _need(ws, *parts: str) -> Path:
    path = ws.path(*parts)
    if not path.is_file():
        raise GroupTuneError(
            f"{path} is missing: the estimator has not run yet. "
            f"Run `grouptune affinity --workspace {ws.root}` first."
        )
    return path


def estimated_subsets(ws) -> list[tuple[str, ...]]:
    """Every subset the estimator sampled, in its order (estimates/subsets.json)."""
    subsets = SUBSETS.need(ws)["subsets"]
    if not subsets:
        raise DataError(
            "no subsets in the file; run `grouptune affinity` again", file=SUBSETS.path(ws)
        )
    return [tuple(s) for s in subsets]


def spread_pick(subsets: list, n: int) -> list:
    """n of `subsets` such that every task appears about equally often: each pick is the
    unpicked subset whose tasks were picked least (lowest maximum count, then lowest sum; ties
    by position), so the check samples the estimates instead of the first task's."""
    counts: dict[str, int] = {}
    left, picked = list(subsets), []
    while left and len(picked) < n:
        best = min(
            range(len(left)),
            key=lambda i: (
                max(counts.get(t, 0) for t in left[i]),
                sum(counts.get(t, 0) for t in left[i]),
                i,
            ),
        )
        pick = left.pop(best)
        picked.append(pick)
        for t in pick:
            counts[t] = counts.get(t, 0) + 1
    return picked


def pick_subsets(ws, n: int, task_names=None) -> list[tuple[str, ...]]:
    """n estimated subsets spread over the tasks (`spread_pick`; deterministic; clamped to how
    many there are). With `task_names` (the config's), a subset naming another task is refused
    as stale."""
    if n < 1:
        raise GroupTuneError(f"--subsets must be at least 1, got {n}")
    subsets = spread_pick(estimated_subsets(ws), n)
    if task_names is not None:
        unknown = sorted({t for s in subsets for t in s} - set(task_names))
        if unknown:
            raise GroupTuneError(
                f"the estimates name tasks the config no longer has ({unknown}); run "
                f"`grouptune affinity --workspace {ws.root}` again"
            )
    return subsets


def predictions(ws) -> pd.DataFrame:
    """estimates/results.csv: one row per (subset, task) with the predicted loss and accuracy."""
    return pd.read_csv(_need(ws, "estimates", "results.csv"))


def subset_adapter(cfg, tasks, seed: int | None) -> str:
    return adapter_name(tasks, None if seed in (None, cfg.training.seed) else seed)


def train_subset(cfg, ws, tasks, progress: bool = True, seed: int | None = None) -> dict:
    """Fine-tune (or resume, or return the finished) adapter of one subset with training seed
    `seed` (None: the config's); its grouptune.json."""
    from core.train.trainer import train_adapter

    name = subset_adapter(cfg, tasks, seed)
    run_cfg = cfg if seed is None else seeded(cfg, seed)
    try:
        return train_adapter(run_cfg, ws, name, list(tasks), progress=progress)
    except StaleError as err:  # made with another model or recipe: a check adapter is disposable
        print(f"{name}: {err}; training it again", file=sys.stderr)
        return train_adapter(run_cfg, ws, name, list(tasks), progress=progress, restart=True)


def train_argv(ws, tasks, seed: int | None = None) -> list[str]:
    """The `grouptune` command one training job runs."""
    return command("train-subset", task=list(tasks), seed=seed, workspace=ws.root)


def submit_training(cfg, ws, subsets, seeds, backend=None) -> list[int]:
    """One background `grouptune train-subset` job per subset and seed; their ids."""
    from core.jobs import submit

    ids = []
    for seed in seeds:
        for tasks in subsets:
            step = f"train:{subset_adapter(cfg, tasks, seed)}"
            argv = train_argv(ws, tasks, seed)
            ids.append(submit(ws.root, step, step, argv, backend=backend, cwd=ROOT))
    return ids


def wait_training(ws, ids: list[int], progress: bool = True) -> None:
    """Wait for the training jobs, counting them off; raise naming every job that failed."""
    from core.jobs import wait
    from core.progress import track

    failed = []
    with track(len(ids), "validate-estimate: real fine-tunes", unit="subset") as bar:
        for job_id in ids:  # jobs start in submission order, so they mostly end in it too
            job = wait(ws.root, [job_id])[job_id]
            if job["state"] != "done":
                failed.append(f"job {job_id} ({job['step']}) {job['state']}: {job['error']}")
            bar.update(1, f"{job['step']} {job['state']}")
            if progress:
                print(f"  {job['step']}: {job['state']}", file=sys.stderr)
    if failed:
        raise GroupTuneError(
            f"validation stopped: {'; '.join(failed)}. See `grouptune jobs logs ID`; running "
            "`grouptune validate-estimate` again resumes from the checkpoints."
        )


def finished_record(ws, tasks, name: str | None = None) -> dict:
    """grouptune.json of a subset's adapter (`name`: another seed's); raises when it has not
    finished training."""
    from core.io import read_json

    path = ws.adapter_dir(name or adapter_name(tasks)) / "grouptune.json"
    if not path.is_file():
        raise GroupTuneError(
            f"{path} is missing: subset {list(tasks)} has not been fine-tuned yet "
            f"(`grouptune validate-estimate --workspace {ws.root}`)"
        )
    return read_json(path)
