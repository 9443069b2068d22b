"""What a job runs: a program, named as an installed console script (`grouptune`, from
pyproject's [project.scripts]) or as an entry-point reference (`package.module:function`).

The jobs floor knows no command of its own: it looks the program up in the installed package's
metadata, the way the shell finds `grouptune`, so nothing here names the layer above it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from core.errors import GroupTuneError

DEFAULT_PROGRAM = "grouptune"


def check_program(program: str) -> str:
    """A console-script name or a `module:function` reference; raise ValueError otherwise."""
    if not isinstance(program, str) or not program.strip() or " " in program:
        raise ValueError(f"program must be a console script or 'module:function', got {program!r}")
    return program


def resolve(program: str) -> Callable[[], object]:
    """The function a job's program names (imported now), called with sys.argv set."""
    if ":" in program:
        return EntryPoint(name=program, value=program, group="grouptune.jobs").load()
    found = entry_points(group="console_scripts", name=program)
    if not found:
        raise GroupTuneError(
            f"no installed program {program!r}: install GroupTune into this environment "
            "(`make install`, or `pip install -e .`) so its console script is registered"
        )
    return next(iter(found)).load()


def command_line(job: dict) -> str:
    """The job as a user would type it (a reference program as `python -c`-free text)."""
    return " ".join([job["program"], *job["argv"]])
