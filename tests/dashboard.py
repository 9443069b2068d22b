"""Helpers for the dashboard's tests: the CLI in-process, the app on a workspace (AppTest), and
what a page showed (texts, plotted data). The workspace they share is conftest's `real_ws`."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_tiny_experiment
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(ROOT))  # the dashboard's pages/ (when pytest runs from elsewhere)
from pages import _common  # noqa: E402

PAGES = ["home", "datasets", "gradients", "affinity", "groups", "training", "compare", "try_it"]


def cli(*argv) -> dict | list | None:
    """Run `grouptune ARGV --json` in this process; return its JSON output."""
    from core.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([*map(str, argv), "--json"])
    assert exit_info.value.code in (0, None), out.getvalue()
    text = out.getvalue().strip()
    return json.loads(text) if text else None


def write_experiment(root: Path) -> Path:
    """The three-task tiny experiment of tests/conftest.py; the config's path."""
    return write_tiny_experiment(root)


def copy_workspace(ws: Path, name: str) -> Path:
    """A copy next to the original (its config's relative paths still resolve), without jobs."""
    dest = ws.parent / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(ws, dest, ignore=shutil.ignore_patterns("jobs.db*", "logs", "exports"))
    return dest


def open_page(workspace: Path | str, page: str, monkeypatch, **state) -> AppTest:
    """Run the app on `workspace`, then switch to `page` (the entry point runs first, as in a
    browser: it sets up the sidebar and the session)."""
    monkeypatch.setenv("GROUPTUNE_WORKSPACE", str(workspace))
    # AppTest starts every run in Streamlit's old pages/ mode (see _through_entrypoint); the
    # rerun that leaves it would drop the click a test just made, so it is skipped here
    monkeypatch.setattr(_common, "_through_entrypoint", lambda: None)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page != "home":
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def decode(obj):
    """A plotly JSON spec with its typed arrays ({"dtype", "bdata", "shape"}) as plain lists."""
    if isinstance(obj, dict) and "bdata" in obj and "dtype" in obj:
        arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
        if obj.get("shape"):
            arr = arr.reshape([int(n) for n in str(obj["shape"]).split(",")])
        return arr.tolist()
    if isinstance(obj, dict):
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def chart_data(at: AppTest, index: int = 0) -> dict:
    """The figure a page plotted (its JSON spec, typed arrays decoded)."""
    return decode(json.loads(at.get("plotly_chart")[index].proto.spec))


def texts(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in at.get(kind)]


# --- (a) nothing there yet ----------------------------------------------------------------------
