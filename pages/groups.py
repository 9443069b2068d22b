"""4 · Groups: how many adapters (m), which tasks share one, and what-if edits."""

from __future__ import annotations

import streamlit as st

from core import pipeline
from core.artifacts import AFFINITY, CHOSEN
from core.errors import GroupTuneError
from core.grouping.edit import move_task
from core.grouping.freshness import sweep_fresh
from core.report.figures import sweep_figure
from core.report.frames import groups_frame
from core.stages import command
from core.validate import trust
from core.views.groups import (
    mean_predicted,
    mix_argv,
    mix_effect,
    mix_targets,
    sweep_entries,
    sweep_frame,
)
from core.views.jobs import cli_text
from pages import _common

st.title(":material/workspaces: Task groups")
st.caption(
    "Tasks that help each other share an adapter. For each number of groups m, two methods "
    "(an SDP relaxation and spectral clustering) propose a partition, and the estimator predicts "
    "each task's accuracy after fine-tuning its group's adapter. Fewer groups = fewer adapters."
)
ws, cfg = _common.require_config()
_common.show_trust(trust.load_validation(ws), cfg, ws)
entries = sweep_entries(ws)
chosen = CHOSEN.read(ws)
if not entries:
    st.info(
        f"No candidate groupings yet. After the affinity step: `{cli_text(command('group'), ws)}`"
    )
    if AFFINITY.path(ws).exists() and st.button("Compute the groupings", key="grp_run"):
        _common.submit(ws, [command("group")])
    _common.live_jobs(ws, stages=("grouping",))
    st.stop()
fresh = sweep_fresh(cfg, ws)
if not fresh:
    st.warning("The affinity matrix or grouping.seed changed since these candidates were computed.")
    if st.button("Recompute the candidates", key="grp_sweep"):
        _common.submit(ws, [command("group", sweep=True)])

n = len(entries[0]["predicted"])
m = st.slider("Number of groups m", 1, n, chosen["m"] if chosen else min(2, n), key="grp_m")
candidates = [e for e in entries if e["m"] == m]
st.dataframe(sweep_frame(candidates), hide_index=True, key="grp_candidates")
for col, e in zip(st.columns(4), candidates, strict=False):
    if col.button(f"Use the {e['method']} grouping", key=f"grp_use_{e['method']}"):
        try:
            if fresh:  # the candidates are cached: choosing one is instant, no job needed
                pipeline.group(cfg, ws, m, e["method"])
            else:
                _common.submit(ws, [command("group", m=m, method=e["method"])])
            st.rerun()
        except GroupTuneError as err:
            st.error(str(err))
st.caption(f"Terminal: `{cli_text(command('group', m=m), ws)}`")
st.plotly_chart(sweep_figure(entries, chosen), key="grp_sweep_chart")

st.subheader("The chosen grouping: move tasks and see the prediction")
if chosen is None:
    st.info("No grouping chosen yet: pick one above.")
    st.stop()
key = f"grp_edit:{ws.root}:{CHOSEN.path(ws).stat().st_mtime}"
edit = st.session_state.setdefault(key, {"groups": chosen["groups"], "moves": []})
pending = _common.features_pending(ws, "moving a task updates the predictions")
model = None if pending else _common.whatif(ws)
predicted = model.predict(edit["groups"]) if model is not None else chosen["predicted"]
mean = mean_predicted(predicted)
c1, c2, c3 = st.columns(3)
c1.metric("Groups", len(edit["groups"]))
c2.metric("Predicted mean accuracy", f"{mean:.3f}", f"{mean - chosen['mean_accuracy']:+.3f}")
c3.metric("Chosen by", chosen.get("method", "?"), help=chosen.get("reason"))
if chosen.get("uncertainty") is not None:
    st.caption(
        f"Recommended m: {chosen['reason']}. One standard error of a predicted mean accuracy "
        f"is {chosen['uncertainty']:.3f}; m whose predictions differ by less than twice that "
        "are not told apart, and the fewest groups among them is taken."
    )
st.dataframe(groups_frame(edit["groups"], predicted), hide_index=True, key="grp_table")

c1, c2, c3 = st.columns([2, 2, 1])
names = [t for g in edit["groups"] for t in g]
task = c1.selectbox("Move task", names, key="grp_task")
targets = [*range(len(edit["groups"])), len(edit["groups"])]
label = {i: f"group {i}" for i in targets} | {len(edit["groups"]): "a new group"}
to = c2.selectbox("to", targets, format_func=label.get, key="grp_to")
if c3.button("Move", key="grp_move", type="primary"):
    try:
        edit["groups"] = move_task(edit["groups"], task, to)
        edit["moves"].append(f"{task}:{to}")
    except GroupTuneError as err:
        st.error(str(err))
    st.rerun()
if edit["moves"]:
    st.caption("The same edit from a terminal:")
    _common.show_cli([command("group", move=mv) for mv in edit["moves"]], ws)
    c1, c2 = st.columns(2)
    if c1.button("Save as the chosen grouping", type="primary", key="grp_save"):
        try:
            pipeline.edit_groups(cfg, ws, edit["groups"])
            st.toast("Saved: train the adapters on the Training page", icon=":material/save:")
            st.rerun()
        except GroupTuneError as err:
            st.error(str(err))
    if c2.button("Undo all edits", key="grp_reset"):
        del st.session_state[key]
        st.rerun()

st.subheader("Mixing weights: how much of each task an adapter sees")
st.caption(
    "An adapter's epoch keeps its number of rows; a task's weight trades rows with the others "
    "(training.mix). The prediction is the estimate of the expected fine-tune, updated as you "
    "move a slider; **Suggest weights** searches them (a background job)."
)
targets = mix_targets(chosen, [t.name for t in cfg.tasks])
label = st.selectbox("Adapter", list(targets), key="grp_mix_target",
                     format_func=lambda k: "single adapter (every task)" if k == "all" else k)  # fmt: skip
tasks = targets[label]
saved = ws.read("groupings", f"mix-{label.split()[-1]}.json")
cols = st.columns(min(len(tasks), 4))
for t in tasks:  # uniform until moved; "Use the suggestion" sets them (a callback, below)
    st.session_state.setdefault(f"grp_mix:{label}:{t}", 1.0)
weights = {
    t: cols[i % len(cols)].slider(t, 0.0, 4.0, step=0.1, key=f"grp_mix:{label}:{t}")
    for i, t in enumerate(tasks)
}
if model is not None:
    table = mix_effect(model.features, cfg, tasks, weights)
    st.dataframe(table, hide_index=True, key="grp_mix_table")
    st.metric("Mean predicted Δ val accuracy", f"{table['Δ val accuracy'].mean():+.3f}")
c1, c2, c3 = st.columns(3)
if c1.button("Suggest weights", key="grp_mix_suggest"):
    _common.submit(ws, [mix_argv(label)])
    st.rerun()
if c3.button("Train with these weights", key="grp_mix_train"):  # compared on Compare
    _common.submit(ws, [mix_argv(label, weights=weights)])
    st.rerun()


def _use_suggestion(label: str, weights: dict) -> None:
    # a callback: it runs before the sliders are drawn again, so their values may change
    for t, w in weights.items():
        st.session_state[f"grp_mix:{label}:{t}"] = round(float(w), 1)


if saved and saved.get("tasks") == tasks:
    c2.button("Use the suggestion", key="grp_mix_use", on_click=_use_suggestion,
              args=(label, saved["weights"]))  # fmt: skip
    st.caption(
        "Last suggestion: "
        + ", ".join(f"{t} {w:.2f}" for t, w in saved["weights"].items())
        + f" (mean predicted Δ val accuracy {saved['effect']['mean']['accuracy']:+.3f})"
    )
_common.show_cli([mix_argv(label)], ws)
_common.live_jobs(ws, stages=("mixing",))  # a finished suggestion appears without a reload
