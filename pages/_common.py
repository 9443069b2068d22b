"""What every page shares: the current workspace and config, cached reads, job submission and
the live view of running jobs. Streamlit-side only; everything derived comes from core."""

from __future__ import annotations

import streamlit as st

from core.artifacts import AFFINITY
from core.errors import GroupTuneError
from core.views.datasets import shared_answer_words, uploaded_tasks
from core.views.jobs import ACTIVE, active_items, cli_text, job_targets, read_jobs, submit_step
from core.views.workspaces import list_workspaces, load_config
from core.workspace import Workspace

START_HINT = "grouptune init --config sample_data/quick.yaml --workspace workspaces/quick"


def _through_entrypoint() -> None:
    """Make sure the page runs inside app.py's navigation.

    Streamlit starts in its old multipage mode when the entry point's folder has a pages/
    directory, and leaves it only once app.py has called st.navigation: a first visit that
    lands straight on /groups would run the page alone (no sidebar, no navigation). Leave that
    mode and run the app again, which then renders this same page through app.py.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def workspace() -> Workspace | None:
    """The experiment picked in the sidebar (app.py); the first one found if none is yet."""
    _through_entrypoint()
    path = st.session_state.setdefault("workspace", (list_workspaces() or [""])[0])
    return Workspace(path) if path else None


def require_config() -> tuple[Workspace, object]:
    """The current workspace and its config; otherwise say how to make one and stop the page."""
    ws = workspace()
    cfg, err = load_config(ws) if ws is not None else (None, "no workspace selected")
    if cfg is None:
        st.info(
            f"No experiment to show ({err}). Create one on the **Datasets** page, or from a "
            f"terminal: `{START_HINT}`"
        )
        st.page_link("pages/datasets.py", label="Go to Datasets", icon=":material/dataset:")
        st.stop()
    return ws, cfg


@st.cache_data(ttl=120, max_entries=16, show_spinner="Loading tasks...")
def _load_tasks(root: str, config_mtime: float, uploads_key: tuple):
    from core.data.sources import load_tasks

    cfg, err = load_config(Workspace(root))
    return load_tasks(cfg)


def tasks(ws: Workspace):
    """The config's tasks (validated, subsampled), cached on the config's modification time;
    shows the data error and stops the page when they do not load."""
    try:
        uploads = tuple(sorted((k, p.stat().st_mtime) for k, p in uploaded_tasks(ws).items()))
        return _load_tasks(str(ws.root), ws.config_path.stat().st_mtime, uploads)
    except (GroupTuneError, ValueError, OSError) as err:
        st.error(f"The experiment's tasks do not load: {err}")
        st.stop()


def submit(ws: Workspace, argvs: list[list[str]], chain: bool = False) -> list[int]:
    """Queue one job per argv (each after the previous one when `chain`); say so."""
    ids: list[int] = []
    for argv in argvs:
        after = ids[-1:] if chain else []
        ids.append(submit_step(ws, argv, depends_on=after))
    if ids:
        st.toast(f"Queued job(s) {', '.join(map(str, ids))}", icon=":material/schedule:")
    return ids


def state_badge(state: str) -> str:
    """A state as a coloured Streamlit badge (markdown)."""
    colors = {"fresh": "green", "stale": "orange", "partial": "orange", "failed": "red"}
    return f":{colors.get(state, 'blue' if state in ACTIVE else 'gray')}-badge[{state}]"


def answer_word_warning(tasks) -> None:
    """One warning listing the pairs of tasks that share answer words."""
    pairs = shared_answer_words(list(tasks))
    if pairs:
        lines = "\n".join(
            f"- **{p['tasks'][0]}** and **{p['tasks'][1]}**: {p['words']}" for p in pairs
        )
        st.warning(
            "These tasks share answer words, so part of their measured affinity is the shared "
            f"answer format rather than the content:\n{lines}"
        )


def show_cli(argvs: list[list[str]], ws: Workspace) -> None:
    st.code("\n".join(cli_text(a, ws) for a in argvs) or "(nothing to run)", language="bash")


def live_jobs(ws: Workspace, stages: tuple[str, ...] = (), every: float = 2.0) -> None:
    """Running and queued jobs with progress and ETA, polled from the job store every
    `every` seconds. When, between two polls, the set of active jobs changes (one finished or
    started), the whole page is rerun so its tables catch up."""
    key = f"_live:{ws.root}:{stages}"
    full_run = st.session_state.get(f"{key}:run", 0) + 1
    st.session_state[f"{key}:run"] = full_run  # this code runs on full page runs only

    @st.fragment(run_every=every)
    def _live():
        jobs = read_jobs(ws)
        active = [j for j in jobs if j["state"] in ACTIVE]
        if stages:
            active = [j for j in active if any(s in stages for s, _ in job_targets(j))]
        ids = sorted(j["id"] for j in active)
        polled = st.session_state.get(f"{key}:seen") == full_run  # a poll, not a page run
        if polled and st.session_state.get(key) != ids:
            st.session_state[key] = ids
            st.rerun(scope="app")  # never during a page run: that would drop its button click
        st.session_state[key], st.session_state[f"{key}:seen"] = ids, full_run
        if not active:
            st.caption("No job running or queued.")
        for job in active:
            frac = float(job.get("progress") or 0.0)
            eta = f", about {job['eta_s']:.0f} s left" if job.get("eta_s") is not None else ""
            text = (
                f"job {job['id']} `{job['step']}` {job['state']}{eta}: {job.get('message') or ''}"
            )
            st.progress(min(max(frac, 0.0), 1.0), text=text)

    _live()


def features_pending(ws: Workspace, needs: str) -> bool:
    """While a gradients job is queued or running (e.g. the one `make demo` queues as the
    dashboard opens), say what on this page waits for it, follow its progress, return True."""
    if not active_items(read_jobs(ws), "gradients"):
        return False
    st.info(
        f"The gradient features are being computed in the background; {needs} when that job "
        "finishes (progress below). Everything else on this page is ready."
    )
    live_jobs(ws, stages=("gradients",))
    return True


@st.cache_resource(max_entries=4, show_spinner="Loading gradient features for what-if...")
def _whatif(root: str, affinity_mtime: float, config_mtime: float):
    from core.estimate.whatif import WhatIf

    ws = Workspace(root)
    cfg, _ = load_config(ws)
    return WhatIf.from_workspace(cfg, ws)


def whatif(ws: Workspace):
    """The what-if predictor (numpy only), shared across sessions until affinity.json or the
    config change; None (with the reason shown) when the features cannot be loaded."""
    try:
        return _whatif(
            str(ws.root), AFFINITY.path(ws).stat().st_mtime, ws.config_path.stat().st_mtime
        )
    except (GroupTuneError, ValueError, OSError) as err:
        st.warning(f"What-if predictions are unavailable: {err}")
        return None


def show_trust(checked: dict | None, cfg, ws) -> None:
    """How far to trust this workspace's estimate (core.validate.trust), coloured by level."""
    from core.validate import trust

    level, line = trust.verdict_line(checked)
    {"good": st.success, "partial": st.warning, "noise": st.error, "thin": st.warning}.get(
        level, st.info
    )(line)
    sketch = trust.projection_note(trust.workspace_projection(ws, cfg))
    for warning in (trust.rows_warning(cfg), sketch):
        if warning:
            st.warning(warning)
