"""GroupTune dashboard entry point: navigation, the shared sidebar and cross-page state.

Run with `grouptune app` (binds to localhost). Pages are thin views over core: they read the
workspace on disk, render it, and submit jobs; they import no torch and do no maths.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent
st.set_page_config(page_title="GroupTune", page_icon=":material/hub:", layout="wide")


def _workspaces() -> list[str]:
    base = ROOT / "workspaces"
    found = (
        sorted(str(p) for p in base.iterdir() if (p / "config.yaml").exists())
        if base.is_dir()
        else []
    )
    env = os.environ.get("GROUPTUNE_WORKSPACE")
    if env and env not in found:
        found.insert(0, env)
    return found


def sidebar() -> None:
    st.sidebar.title("GroupTune")
    options = _workspaces()
    default = os.environ.get("GROUPTUNE_WORKSPACE")
    st.session_state.setdefault("workspace", default or (options[0] if options else ""))
    if options:
        st.sidebar.selectbox("Experiment workspace", options, key="workspace")
    else:
        st.sidebar.info("No workspace yet: `grouptune init --config sample_data/quick.yaml`")


pages = [
    st.Page(str(ROOT / "pages" / "home.py"), title="Home", icon=":material/home:", default=True)
]
nav = st.navigation(pages)
sidebar()
nav.run()
