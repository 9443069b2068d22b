"""Home: where the experiment stands, stage by stage, and what to do next."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.artifacts import CHOSEN
from core.report.tables import headline, load_report
from core.views.jobs import ACTIVE, job_counts, read_jobs, submit_run
from core.views.stages import experiment_status, next_step, stage_summary
from core.views.story import story
from pages import _common

st.title(":material/hub: GroupTune")
st.caption(
    "Fine-tune one language model on many datasets at once: measure which datasets help each "
    "other, group them, train one small adapter per group, and compare that ensemble with a "
    "single adapter trained on everything."
)
ws, cfg = _common.require_config()
tasks = _common.tasks(ws)
jobs = read_jobs(ws)
rows = experiment_status(ws, cfg, tasks, jobs)
report = load_report(ws)

st.subheader(f"Experiment `{cfg.name}`")
chosen = CHOSEN.read(ws)
c1, c2, c3, c4 = st.columns(4)
c1.metric("Tasks", len(cfg.tasks))
c2.metric("Groups (m)", chosen["m"] if chosen else "—")
head = headline(report) if report else {"mean_accuracy": {}, "ensemble_minus_baseline": None}
ensemble, delta = head["mean_accuracy"].get("ensemble"), head["ensemble_minus_baseline"]
c3.metric(
    "Ensemble mean accuracy",
    f"{ensemble:.3f}" if ensemble is not None else "—",
    f"{delta:+.3f} vs single adapter" if delta is not None else None,
)
counts = job_counts(jobs)
c4.metric("Jobs running / queued", f"{counts['running']} / {counts['queued']}")
if head.get("gain_text"):
    st.caption(f"Ensemble − single adapter: {head['gain_text']}. {head['gain_verdict']}")
if head.get("gain_parts_text"):
    st.caption(f"Where it comes from: {head['gain_parts_text']}.")

tale = story(ws)
if tale["groups"]:
    st.subheader("The story in one screen")
    st.markdown(
        "**The groups:** "
        + " · ".join(f"group {i}: {', '.join(g)}" for i, g in enumerate(tale["groups"]))
    )
    blocks = tale["blocks"]
    if blocks and blocks["within"] is not None and blocks["across"] is not None:
        st.markdown(
            f"**Why:** tasks in the same group help each other by a mean affinity of "
            f"{blocks['within']:+.2f}, tasks in different groups {blocks['across']:+.2f} "
            "(the Affinity page's blocks)."
        )
    elif blocks and blocks["within"] is not None:
        st.markdown(
            f"**Why:** one group: the estimate found no split that beats one adapter "
            f"(mean affinity {blocks['within']:+.2f}). {tale['reason'] or ''}"
        )
    pvr = pd.DataFrame(tale["predicted_vs_real"])
    if not pvr.empty and pvr["real val accuracy"].notna().any():
        st.markdown("**Predicted against real** (val accuracy of each task's group adapter):")
        st.dataframe(pvr, hide_index=True, key="home_story_pvr")
    if tale["gain_text"]:
        cost = (
            f" for {tale['flops_paper']:.2f}x the single adapter's training FLOPs the paper's "
            f"way ({tale['flops_full']:.2f}x in full)"
            if tale["flops_paper"] and tale["flops_full"]
            else ""
        )
        st.markdown(
            f"**Ensemble against one adapter:** {tale['gain_text']}{cost}. {tale['gain_verdict']}"
        )

st.subheader("Where it stands")
for stage in stage_summary(rows):
    a, b, c = st.columns([3, 1, 2])
    a.markdown(f"**{stage['label']}**")
    b.markdown(_common.state_badge(stage["state"]))
    c.caption(f"{stage['fresh']} of {stage['total']} up to date")
with st.expander("Every item"):
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="home_rows")

st.subheader("What to do next")
step = next_step(rows)
if step is None:
    st.success("Everything is up to date. See the comparison on the **Compare** page.")
    st.page_link("pages/compare.py", label="Open Compare", icon=":material/leaderboard:")
elif step["busy"] and not step["argvs"]:
    st.info(f"{step['title']}: a job is on it ({step['why']}). This page follows it below.")
else:
    st.info(f"**{step['title']}.** Why: {step['why']}")
    _common.show_cli(step["argvs"], ws)
    if st.button("Run this step", type="primary", icon=":material/play_arrow:", key="home_next"):
        _common.submit(ws, step["argvs"])
        st.rerun()

st.divider()
left, right = st.columns([3, 2])
driver = any(j["state"] in ACTIVE and j["step"] == "run" for j in jobs)
with left:
    st.markdown("**Run everything** in the background, in order, skipping what is up to date.")
    st.code(f"grouptune run {ws.root / 'config.resolved.yaml'} --workspace {ws.root}", "bash")
    if st.button(
        "Run everything", icon=":material/rocket_launch:", disabled=driver, key="home_all"
    ):
        job = submit_run(ws, cfg)
        st.toast(f"Queued the pipeline driver (job {job})", icon=":material/rocket_launch:")
        st.rerun()
with right:
    st.markdown("**Jobs now**")
    _common.live_jobs(ws)
