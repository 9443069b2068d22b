"""5 · Training: one adapter per group and the single-adapter baseline, as background jobs;
live curves; stop, resume, retry; logs."""

from __future__ import annotations

import streamlit as st

from core.errors import GroupTuneError
from core.jobs import cancel, resume, retry
from core.report.figures import loss_figure, val_figure
from core.stages import command
from core.views.jobs import jobs_frame, read_jobs, tail_log
from core.views.training import adapters_frame, read_training_metrics
from pages import _common

st.title(":material/model_training: Training")
st.caption(
    "Each group gets its own small adapter (LoRA on a quantised base model: QLoRA), trained on "
    "its group's tasks only. The baseline is one adapter trained on every task. Jobs run one "
    "after another in the background; closing this page does not stop them."
)
ws, cfg = _common.require_config()
jobs = read_jobs(ws)
adapters = adapters_frame(ws, cfg, _common.tasks(ws), jobs)
c1, c2, c3 = st.columns(3)
c1.metric("Adapters up to date", f"{int((adapters['state'] == 'fresh').sum())} / {len(adapters)}")
patience = cfg.training.patience
c2.metric(
    "Epochs (max)",
    cfg.training.epochs,
    help=f"early stopping after {patience} epochs without a better val loss"
    if patience
    else "no early stopping",
)
c3.metric("Learning rate", f"{cfg.training.lr:g}")
st.dataframe(adapters, hide_index=True, key="tr_adapters")
if len(adapters) == 1:
    st.info("No groups chosen yet (Groups page): only the baseline can be trained now.")

todo = adapters.loc[~adapters["state"].isin(["fresh", "running", "queued"]), "adapter"].tolist()
argvs = [command("train", adapter=a) for a in todo]
left, right = st.columns(2)
with left:
    st.markdown("**Train what is not up to date** (one queued job per adapter)")
    _common.show_cli(argvs, ws)
    if st.button("Train", type="primary", disabled=not argvs, key="tr_all"):
        _common.submit(ws, argvs)
        st.rerun()
with right:
    st.markdown("**One adapter**")
    name = st.selectbox("Adapter", adapters["adapter"].tolist(), key="tr_one_name")
    st.caption("A finished adapter is kept; an interrupted one resumes from its checkpoint.")
    if st.button("Train this adapter", key="tr_one"):
        _common.submit(ws, [command("train", adapter=name)])
        st.rerun()


@st.fragment(run_every=3)
def curves() -> None:
    steps, val = read_training_metrics(ws, st.session_state.get("tr_curve", "baseline"))
    if steps.empty:
        st.caption("No training steps logged yet for this adapter.")
        return
    a, b = st.columns(2)
    a.plotly_chart(loss_figure(steps, st.session_state["tr_curve"]), key="tr_loss")
    if not val.empty:
        b.plotly_chart(val_figure(val, st.session_state["tr_curve"]), key="tr_val")


st.subheader("Live curves")
st.selectbox("Adapter", adapters["adapter"].tolist(), key="tr_curve")
curves()

st.subheader("Jobs")
_common.live_jobs(ws)
table = jobs_frame(jobs)
columns = {
    "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1),
    "eta_s": st.column_config.NumberColumn("ETA s", format="%.0f"),
    "runtime_s": st.column_config.NumberColumn("runtime s", format="%.1f"),
}
st.dataframe(table, hide_index=True, key="tr_jobs", column_config=columns)
if not table.empty:
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    steps = dict(zip(table["id"], table["step"], strict=True))
    job_id = c1.selectbox(
        "Job", list(steps), format_func=lambda i: f"{i} · {steps[i]}", key="tr_job"
    )
    actions = {
        "Stop": lambda: cancel(ws.root, job_id, wait=False),
        "Resume": lambda: resume(ws.root, job_id),
        "Retry": lambda: retry(ws.root, job_id),
    }
    for col, (label, act) in zip((c2, c3, c4), actions.items(), strict=True):
        if col.button(label, key=f"tr_{label.lower()}"):
            try:
                act()
                st.toast(f"{label}: job {job_id}")
            except GroupTuneError as err:
                st.error(str(err))
    job = next(j for j in jobs if j["id"] == job_id)
    st.caption(f"Log `{job['log_path']}` (last lines)")
    st.code(tail_log(job["log_path"]) or "(empty)", language="text")
