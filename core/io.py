"""Atomic, self-describing writes: a crash never leaves a half-written file under its real name."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def safe_name(name: str, what: str = "name") -> str:
    """Return `name` if it can be used as one path component, else raise.

    Names become folders in the workspace, so '..', slashes and hidden names are refused.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise DataError(
            f"{what} {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (it becomes a folder name)",
            field=what,
        )
    return name


def _atomic(path: Path, write_fn, mode: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write_fn(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path, text: str) -> Path:
    return _atomic(path, lambda fh: fh.write(text), "w")


def write_bytes(path, data: bytes) -> Path:
    return _atomic(path, lambda fh: fh.write(data), "wb")


def write_json(path, obj: Any) -> Path:
    return write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def read_json(path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_npy(path, array: np.ndarray) -> Path:
    return _atomic(path, lambda fh: np.save(fh, np.asarray(array), allow_pickle=False), "wb")


def read_npy(path, mmap: bool = False) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
