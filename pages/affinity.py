"""3 · Affinity: which tasks help each other, the evidence behind each number, the
estimator settings that produced them, and how far to trust them (real fine-tunes of a few
estimated subsets, core.validate.validation)."""

from __future__ import annotations

import streamlit as st

from core.config import PROJECTIONS, parse_config
from core.errors import GroupTuneError
from core.estimate.methods import METHODS as ESTIMATORS
from core.report.figures import heatmap_figure
from core.report.frames import affinity_view
from core.stages import command
from core.validate import trust
from core.views.affinity import estimator_settings, pair_evidence, strongest_pair
from core.views.jobs import active_items, cli_text, read_jobs
from core.views.stages import affinity_state, gradient_status
from pages import _common

st.title(":material/grid_on: Task affinity")
st.caption(
    "Each cell estimates how much training on one task helps another (positive, blue) or hurts "
    "it (negative, red), from many small simulated fine-tunes on random subsets of the tasks. "
    "Tasks are ordered by group, so blocks of related tasks show along the diagonal."
)
ws, cfg = _common.require_config()
tasks = _common.tasks(ws)
jobs = read_jobs(ws)
grads = gradient_status(ws, cfg, tasks)
state = affinity_state(ws, cfg, grads)
view = affinity_view(ws)
st.markdown(f"Status: {_common.state_badge(state['state'])} {state['detail']}")
_common.answer_word_warning(tasks)

ready = all(v == "fresh" for v in grads.values())
pending = _common.features_pending(
    ws, "the matrix below is current again and re-estimating is possible"
)
if (view is None or state["state"] == "stale") and not (pending and view is not None):
    st.info(
        "The affinity matrix needs the gradient features of every task (Gradients page), "
        f"then: `{cli_text(command('affinity'), ws)}`"
    )
    busy = active_items(jobs, "affinity")
    if st.button("Estimate the affinity", disabled=not ready or bool(busy), key="af_run"):
        _common.submit(ws, [command("affinity"), command("group", sweep=True)], chain=True)
        st.rerun()
if view is not None:
    st.plotly_chart(heatmap_figure(view), key="af_heatmap")
    st.subheader("The evidence behind one cell")
    a0, b0 = strongest_pair(view["T"])
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
    st.dataframe(pair_evidence(ws, a, b), hide_index=True, key="af_evidence")

st.subheader("Estimator settings")
st.dataframe(estimator_settings(cfg, view), hide_index=True, key="af_settings")
with st.form("af_form"):
    st.caption(
        "; ".join(f"{name}: {c.summary}" for name, c in ESTIMATORS.items())
        + ". argmin's λ = 0 calibrates λ so each update has the max norm. Changing the "
        "projection or k recomputes the gradient features; the other settings only re-run the "
        "estimate."
    )
    e = cfg.estimator
    methods = list(ESTIMATORS)
    method = st.selectbox("Estimator", methods, methods.index(e.method), key="af_method")
    c0, c1, c2, c3, c4 = st.columns(5)
    kinds = list(PROJECTIONS)
    projection = c0.selectbox("Projection", kinds, kinds.index(cfg.features.projection))
    k = c1.number_input("Sketch dim k (0 = 4096)", 0, 65536, cfg.features.k or 0, step=8)
    subsets = c2.number_input("Subsets K", 1, 10000, e.subsets)
    size = c3.number_input("Subset size", 2, max(2, len(cfg.tasks)), e.subset_size)
    pairs = c4.checkbox("All pairs instead", e.pairs)
    c1, c2, c3 = st.columns(3)
    reg = c1.number_input("λ (0 = calibrated)", 0.0, 1e6, float(e.reg or 0.0), format="%.4f")
    max_norm = c2.number_input("Max update norm", 1e-4, 1e4, float(e.max_norm), format="%.3f")
    metric = c3.selectbox("Metric", ["loss", "accuracy"], ["loss", "accuracy"].index(e.metric))
    if st.form_submit_button("Save and re-estimate", type="primary"):
        data = cfg.model_dump(mode="json", exclude={"base_dir"})
        data["features"].update(projection=projection, k=int(k) or None)
        data["estimator"].update(subsets=int(subsets), subset_size=int(size), pairs=pairs)
        data["estimator"].update(reg=reg or None, max_norm=max_norm, metric=metric)
        data["estimator"]["method"] = method
        try:
            new = parse_config(data, source="the estimator settings", base_dir=cfg.base_dir)
        except GroupTuneError as err:
            st.error(str(err))
        else:
            ws.save_config(new)
            moved = (new.features.k, new.features.projection) != (
                cfg.features.k,
                cfg.features.projection,
            )
            stale = moved or any(v != "fresh" for v in grads.values())
            first = [command("gradients")] if stale else []
            argvs = [*first, command("affinity"), command("group", sweep=True)]
            _common.submit(ws, argvs, chain=True)
            st.rerun()

st.subheader("How far to trust the estimate")
st.caption(
    "The numbers above are predictions from a linear (first-order) model of fine-tuning. "
    "Fine-tuning a few of the estimated subsets for real shows how close they come on this data, "
    "and whether the real updates stay small enough for the linear model to hold."
)
checked = trust.load_validation(ws)
_common.show_trust(checked, cfg, ws)
if checked is not None:
    s, verdict = checked["summary"], checked["verdict"]
    if not verdict["linear_regime"]:
        st.warning(
            "The linear regime looks broken here; treat the estimates as rough:\n"
            + "\n".join(f"- {r}" for r in verdict["reasons"])
        )
    if not trust.checked_current(checked, ws):
        st.info("The estimates changed since this check; run it again to compare the new ones.")
    c = st.columns(4)
    num = trust.number
    c[0].metric(
        "Order agreement",
        num(s.get("order_agreement_vs_mean"), ".0%"),
        help="Pairs of subsets sharing a task, ordered alike by the estimate and by the mean of "
        f"{s.get('seeds')} real fine-tunes' val loss (50% = chance; {s.get('pairs')} pairs). "
        "Grouping rests on this.",
    )
    c[1].metric("One seed vs the others", num(s.get("ceiling_order_agreement_loo"), ".0%"),
                help="The same for one real fine-tune against the mean of the other seeds: "
                "the noise ceiling.")  # fmt: skip
    c[2].metric("Within-task loss corr.", num(s.get("within_task_corr_loss_vs_mean")),
                help=f"One seed vs the others: {num(s.get('ceiling_corr_loss_loo'))}")  # fmt: skip
    c[3].metric("Seed-matched", num(s.get("order_agreement_seed_matched"), ".0%"),
                help="The replay of each seed's own batch order against that seed's run: how "
                "well one known run is predicted, not what a grouping relies on.")  # fmt: skip
    c = st.columns(5)
    corr = s["loss_correlation"]
    c[0].metric(
        "Mean loss error", f"{s['mean_loss_rel_error']:.1%}", help="|predicted − real| / real"
    )
    c[1].metric("Mean accuracy error", f"{s['mean_accuracy_abs_error']:.3f}")
    c[2].metric("Loss correlation", "—" if corr is None else f"{corr:.2f}")
    c[3].metric("Largest weight change", f"{s['max_weight_change']:.2%}", help="‖ΔW‖ / ‖W‖")
    c[4].metric("Largest change of A", f"{s['max_a_change']:.2%}", help="‖A − A0‖ / ‖A0‖")
    left, right = st.columns(2)
    left.plotly_chart(trust.trust_figure(checked, "loss"), key="af_trust_loss")
    right.plotly_chart(trust.trust_figure(checked, "accuracy"), key="af_trust_acc")
    st.dataframe(trust.points_frame(checked), hide_index=True, key="af_trust_rows")
    st.dataframe(trust.updates_frame(checked), hide_index=True, key="af_trust_updates")
available = trust.available_subsets(ws)
if checked is None:
    st.info(
        "Not checked yet. This fine-tunes N estimated subsets (spread over the tasks) for real "
        "with three training seeds (one background job each, about a minute per subset on a CPU) "
        "and compares them with their estimates."
    )
n = st.number_input(
    "Subsets to fine-tune",
    1,
    max(1, available),
    min(trust.DEFAULT_SUBSETS, max(1, available)),
    key="af_trust_n",
)
_common.show_cli([trust.command(n)], ws)
busy = trust.active_jobs(jobs)
label = "Fine-tune and compare" if checked is None else "Check again"
if st.button(label, disabled=not available or bool(busy), key="af_trust_run"):
    job = trust.submit_validation(ws, n)
    st.toast(f"Queued job {job}", icon=":material/schedule:")
    st.rerun()
_common.live_jobs(ws, stages=("gradients", "affinity", "grouping", "validation"))
