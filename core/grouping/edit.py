"""Editing a grouping by hand (the Groups page): move a task to another group, split or merge groups; each edit returns a new, checked partition."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.grouping.partition import GroupingError


def _check_groups(groups: Sequence[Sequence[str]]) -> list[list[str]]:
    out = [list(g) for g in groups]
    seen: set[str] = set()
    for g in out:
        for task in g:
            if task in seen:
                raise GroupingError(f"task {task!r} is in more than one group")
            seen.add(task)
    return out


def _check_index(groups: list, index, what: str, allow_end: bool = False) -> int:
    top = len(groups) + (1 if allow_end else 0)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < top:
        raise GroupingError(f"{what} must be an integer in 0..{top - 1}, got {index!r}")
    return int(index)


def move_task(groups, task: str, to_index: int) -> list[list[str]]:
    """Move `task` to the end of groups[to_index]; to_index == len(groups) makes a new group.

    Returns a new list; group order is kept (so a UI's indices stay valid) and a group left
    empty is dropped.
    """
    groups = _check_groups(groups)
    to_index = _check_index(groups, to_index, "to_index", allow_end=True)
    src = next((k for k, g in enumerate(groups) if task in g), None)
    if src is None:
        raise GroupingError(f"task {task!r} is in no group")
    if src == to_index:
        return groups
    groups[src].remove(task)
    if to_index == len(groups):
        groups.append([])
    groups[to_index].append(task)
    return [g for g in groups if g]


def split_group(groups, index: int, tasks: Sequence[str]) -> list[list[str]]:
    """Move `tasks` (a non-empty proper subset of groups[index]) to a new group right after it."""
    groups = _check_groups(groups)
    index = _check_index(groups, index, "index")
    tasks = list(tasks)
    foreign = [t for t in tasks if t not in groups[index]]
    if foreign:
        raise GroupingError(f"tasks {foreign} are not in group {index}")
    if not tasks or len(set(tasks)) == len(groups[index]):
        raise GroupingError("a split must move at least one task and leave at least one")
    kept = [t for t in groups[index] if t not in tasks]
    moved = [t for t in groups[index] if t in tasks]
    return groups[:index] + [kept, moved] + groups[index + 1 :]


def merge_groups(groups, i: int, j: int) -> list[list[str]]:
    """Merge groups i and j into one at position min(i, j) (the earlier group's tasks first)."""
    groups = _check_groups(groups)
    i, j = sorted((_check_index(groups, i, "i"), _check_index(groups, j, "j")))
    if i == j:
        raise GroupingError(f"cannot merge group {i} with itself")
    merged = groups[i] + groups[j]
    return [merged if k == i else g for k, g in enumerate(groups) if k != j]
