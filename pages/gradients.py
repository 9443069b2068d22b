"""2 · Gradients: per-example gradient features of every task, computed as background jobs."""

from __future__ import annotations

import streamlit as st

from core.stages import command
from core.views.affinity import projection_label
from core.views.jobs import active_items, read_jobs
from core.views.stages import gradient_table
from pages import _common

st.title(":material/functions: Gradient features")
st.caption(
    "For every training and validation example we record how the model's answer would change "
    "if the adapter moved (a projected gradient). That is computed once per task and cached; "
    "the affinity estimates and the what-if predictions reuse it without further training."
)
ws, cfg = _common.require_config()
tasks = _common.tasks(ws)
jobs = read_jobs(ws)
table = gradient_table(ws, cfg, tasks, jobs)
fresh = int((table["status"] == "fresh").sum())

c1, c2, c3, c4 = st.columns(4)
c1.metric("Tasks up to date", f"{fresh} / {len(table)}")
c2.metric("Projection", cfg.features.projection, help=projection_label(cfg.features))
c3.metric("Target", cfg.features.target)
c4.metric("Max tokens", cfg.data.max_tokens)

st.subheader("Cache status per task")
st.caption(
    "fresh: computed with today's settings · stale: a setting or the data changed, so it is "
    "recomputed from scratch · partial: interrupted, resumes where it stopped · missing: never run."
)
seconds = st.column_config.NumberColumn("seconds", format="%.1f")
st.dataframe(table, hide_index=True, key="gr_table", column_config={"seconds": seconds})

todo = table.loc[table["status"] != "fresh", "task"].tolist()
busy = active_items(jobs, "gradients")
left, right = st.columns(2)
with left:
    st.markdown("**Compute what is not up to date** (one job per task)")
    argvs = [command("gradients", task=t) for t in todo if t not in busy and "*" not in busy]
    _common.show_cli(argvs, ws)
    if st.button("Compute", type="primary", disabled=not argvs, key="gr_all"):
        _common.submit(ws, argvs)
        st.rerun()
with right:
    st.markdown("**One task**")
    task = st.selectbox("Task", table["task"].tolist(), key="gr_task")
    st.caption("A fresh store is reused, so this only does work when the task is not fresh.")
    if st.button("Compute this task", key="gr_one", disabled=task in busy):
        _common.submit(ws, [command("gradients", task=task)])
        st.rerun()

st.subheader("Running jobs")
_common.live_jobs(ws, stages=("gradients",))
