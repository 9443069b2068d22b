"""GroupTune dashboard entry point: navigation, the shared sidebar and cross-page state.

Run with `grouptune app` (binds to localhost). Pages are thin views over core: they read the
workspace on disk, render it, and submit jobs; they import no torch and do no maths. All
state is on disk, so closing the browser or restarting the server loses nothing.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.views.jobs import job_counts, read_jobs
from core.views.workspaces import list_workspaces, load_config
from core.workspace import Workspace

ROOT = Path(__file__).resolve().parent
st.set_page_config(page_title="GroupTune", page_icon=":material/hub:", layout="wide")

PAGES = [
    ("home.py", "Home", ":material/home:"),
    ("datasets.py", "1 · Datasets", ":material/dataset:"),
    ("gradients.py", "2 · Gradients", ":material/functions:"),
    ("affinity.py", "3 · Affinity", ":material/grid_on:"),
    ("groups.py", "4 · Groups", ":material/workspaces:"),
    ("training.py", "5 · Training", ":material/model_training:"),
    ("compare.py", "6 · Compare", ":material/leaderboard:"),
    ("try_it.py", "7 · Try it", ":material/chat:"),
]


def _pick_workspace() -> None:
    st.session_state["workspace"] = st.session_state["_sidebar_workspace"]


def sidebar() -> None:
    options = list_workspaces()
    st.session_state.setdefault("workspace", options[0] if options else "")
    current = st.session_state["workspace"]
    if current and current not in options:
        options = [current, *options]  # e.g. just created on the Datasets page
    st.sidebar.title(":material/hub: GroupTune")
    if options:
        st.sidebar.selectbox(
            "Experiment",
            options,
            index=options.index(current) if current in options else 0,
            format_func=lambda p: Path(p).name,
            key="_sidebar_workspace",
            on_change=_pick_workspace,
            help="An experiment is a workspace folder holding config.yaml and everything made.",
        )
    else:
        st.sidebar.info("No experiment yet: create one on the Datasets page.")
    if not current:
        return
    ws = Workspace(current)
    st.sidebar.caption(f"`{ws.root}`")
    cfg, err = load_config(ws)
    if cfg is not None:
        st.sidebar.markdown(
            f"**Model** `{cfg.model.name}`  \n**Quantisation** `{cfg.model.quantization}`  \n"
            f"**Tasks** {len(cfg.tasks)} (edit on the Datasets page)"
        )
    else:
        st.sidebar.warning(err)
    counts = job_counts(read_jobs(ws))
    st.sidebar.markdown("**Background jobs**")
    c1, c2, c3 = st.sidebar.columns(3)
    c1.metric("Running", counts["running"])
    c2.metric("Queued", counts["queued"])
    c3.metric("Failed", counts["failed"])


pages = [
    st.Page(str(ROOT / "pages" / f), title=t, icon=i, default=f == "home.py") for f, t, i in PAGES
]
nav = st.navigation(pages)
sidebar()
nav.run()
