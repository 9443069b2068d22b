"""Errors a user can act on: each names the file, row and field at fault."""

from __future__ import annotations


class GroupTuneError(Exception):
    """Base class: any error the CLI and dashboard show as a plain message, not a traceback."""


class DataError(GroupTuneError, ValueError):
    """Bad input data. The message names the file, the row (1-based) and the field when known."""

    def __init__(
        self, message: str, *, file=None, row: int | None = None, field: str | None = None
    ):
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        self.file, self.row, self.field = file, row, field
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ConfigError(GroupTuneError, ValueError):
    """An experiment config that does not validate."""


class StaleError(GroupTuneError):
    """A stored artifact was made with other settings than the ones asked for."""
