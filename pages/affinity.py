"""3 · Affinity: which tasks help each other, the evidence behind each number, and the
estimator settings that produced them."""

from __future__ import annotations

import streamlit as st

from core import status
from core.config import parse_config
from core.errors import GroupTuneError
from core.export import heatmap_figure
from pages import _common

st.title(":material/grid_on: Task affinity")
st.caption(
    "Each cell estimates how much training on one task helps another (positive, blue) or hurts "
    "it (negative, red), from many small simulated fine-tunes on random subsets of the tasks. "
    "Tasks are ordered by group, so blocks of related tasks show along the diagonal."
)
ws, cfg = _common.require_config()
tasks = _common.tasks(ws)
jobs = status.read_jobs(ws)
grads = status.gradient_status(ws, cfg, tasks)
state = status.affinity_state(ws, cfg, grads)
view = status.affinity_view(ws)
st.markdown(f"Status: {_common.state_badge(state['state'])} {state['detail']}")
_common.answer_word_warning(tasks)

ready = all(v == "fresh" for v in grads.values())
if view is None or state["state"] == "stale":
    st.info(
        "The affinity matrix needs the gradient features of every task (Gradients page), "
        f"then: `{status.cli_text(['affinity'], ws)}`"
    )
    busy = status.active_items(jobs, "affinity")
    if st.button("Estimate the affinity", disabled=not ready or bool(busy), key="af_run"):
        _common.submit(ws, [["affinity"], ["group", "--sweep"]], chain=True)
        st.rerun()
if view is not None:
    st.plotly_chart(heatmap_figure(view), key="af_heatmap")
    st.subheader("The evidence behind one cell")
    a0, b0 = status.strongest_pair(view["T"])
    c1, c2, c3 = st.columns([2, 2, 1])
    a = c1.selectbox("Task", view["order"], index=view["order"].index(a0), key="af_a")
    others = [t for t in view["order"] if t != a]
    b = c2.selectbox("With", others, index=others.index(b0) if b0 in others else 0, key="af_b")
    c3.metric("Affinity", f"{view['T'].loc[a, b]:.3f}", help="mean of the z column below")
    st.caption(
        "Every sampled subset holding both tasks: the estimated loss and accuracy of each after "
        "a simulated fine-tune on the subset, against its zero-shot value; z compares that "
        "result with the task's results in its other subsets."
    )
    st.dataframe(status.pair_evidence(ws, a, b), hide_index=True, key="af_evidence")

st.subheader("Estimator settings")
st.dataframe(status.estimator_settings(cfg, view), hide_index=True, key="af_settings")
with st.form("af_form"):
    st.caption(
        "Changing k recomputes the gradient features; the other settings only re-run the "
        "estimate (seconds). λ = 0 means: calibrate λ so each update has the max norm."
    )
    e = cfg.estimator
    c1, c2, c3, c4 = st.columns(4)
    k = c1.number_input("Projection dim k", 8, 16384, cfg.features.k, step=8)
    subsets = c2.number_input("Subsets K", 1, 10000, e.subsets)
    size = c3.number_input("Subset size", 2, max(2, len(cfg.tasks)), e.subset_size)
    pairs = c4.checkbox("All pairs instead", e.pairs)
    c1, c2, c3 = st.columns(3)
    reg = c1.number_input("λ (0 = calibrated)", 0.0, 1e6, float(e.reg or 0.0), format="%.4f")
    max_norm = c2.number_input("Max update norm", 1e-4, 1e4, float(e.max_norm), format="%.3f")
    metric = c3.selectbox("Metric", ["loss", "accuracy"], ["loss", "accuracy"].index(e.metric))
    if st.form_submit_button("Save and re-estimate", type="primary"):
        data = cfg.model_dump(mode="json", exclude={"base_dir"})
        data["features"]["k"] = int(k)
        data["estimator"].update(subsets=int(subsets), subset_size=int(size), pairs=pairs)
        data["estimator"].update(reg=reg or None, max_norm=max_norm, metric=metric)
        try:
            new = parse_config(data, source="the estimator settings", base_dir=cfg.base_dir)
        except GroupTuneError as err:
            st.error(str(err))
        else:
            ws.save_config(new)
            stale = new.features.k != cfg.features.k or any(v != "fresh" for v in grads.values())
            first = [["gradients"]] if stale else []
            _common.submit(ws, [*first, ["affinity"], ["group", "--sweep"]], chain=True)
            st.rerun()
_common.live_jobs(ws, stages=("gradients", "affinity", "grouping"))
