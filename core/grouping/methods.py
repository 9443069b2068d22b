"""The grouping methods by name, one contract (scikit-learn's): `Method(m=…, random_state=…)
.fit(T)` sets `labels_` (n,) and `objective_`; class attributes say its `name` (the spelling in
`grouping.method`, `grouptune group --method` and the pages), a one-line `summary`, and whether
it is `swept` (a candidate `choose.sweep` scores for every m; a control is not). A new method
is a class in its own file, its test, and one entry in METHODS."""

from __future__ import annotations

from core.grouping.partition import GroupingError, SDPGrouping, SpectralGrouping
from core.grouping.random_control import RandomGrouping

METHODS: dict[str, type] = {c.name: c for c in (SDPGrouping, SpectralGrouping, RandomGrouping)}
SWEPT: tuple[str, ...] = tuple(name for name, c in METHODS.items() if c.swept)


def method_class(name: str) -> type:
    if name not in METHODS:
        raise GroupingError(f"unknown grouping method {name!r}; use one of {', '.join(METHODS)}")
    return METHODS[name]


def group_tasks(T, m: int, method: str = "sdp", random_state=0):
    """Canonical labels (n,) for exactly m groups by the named method."""
    return method_class(method)(m=m, random_state=random_state).fit(T).labels_
