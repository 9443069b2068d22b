"""7 · Try it: type or upload an input for a task and see the ensemble's answer, each adapter's
vote and weight, and the single adapter's answer beside it; the same as `grouptune predict
--explain`, which the page runs as a background job (core.views.tryit)."""

from __future__ import annotations

import streamlit as st

from core.artifacts import MANIFEST
from core.data.inputs import needs_pair, table_inputs, task_columns
from core.data.tables import TABLE_TYPES, parse_table
from core.errors import GroupTuneError
from core.stages import command
from core.views import tryit
from core.views.jobs import ACTIVE, cli_text
from pages import _common

st.title(":material/chat: Try it")
st.caption(
    "Ask the trained ensemble about a new input. Its answer comes from the same scores "
    "`grouptune evaluate` reports: each group adapter's answer-word scores, weighted per task, "
    "plus the boosting rounds. The single adapter trained on every task answers beside it."
)
ws, cfg = _common.require_config()
manifest = MANIFEST.read(ws)
if manifest is None:
    st.info(
        "Nothing trained yet: train the group adapters first (Training page, or "
        f"`{cli_text(command('train'), ws)}`)."
    )
    st.stop()
tasks = {t.name: t for t in _common.tasks(ws)}
names = [t for g in manifest["groups"] for t in g if t in tasks]
task = tasks[st.selectbox("Task", names, key="try_task")]
words = ", ".join(f"{label} → `{word!r}`" for label, word in task.labels.items())
st.caption(f"Answers (label → answer word): {words}")

rows: list[dict] = []
mode = st.radio("Input", ["Type a text", "Upload rows"], horizontal=True, key="try_mode")
if mode == "Type a text":
    text = st.text_area("Text", key="try_text", placeholder="e.g. The soup was cold and bland.")
    pair = st.text_area("Second text", key="try_pair") if needs_pair(task) else ""
    if text.strip() and (pair.strip() or not needs_pair(task)):
        rows = [{"text": text.strip()} | ({"text_pair": pair.strip()} if pair.strip() else {})]
else:
    upload = st.file_uploader(
        f"Rows to answer (up to {tryit.MAX_ROWS}; the task's text column, a label column is "
        "optional)",
        type=list(TABLE_TYPES),
        key="try_upload",
    )
    if upload is not None:
        try:
            table = parse_table(upload.getvalue(), upload.name)
            rows = table_inputs(table, task, task_columns(cfg, task.name))
            if len(rows) > tryit.MAX_ROWS:
                st.caption(
                    f"The first {tryit.MAX_ROWS} of {len(rows)} rows are answered here; "
                    "`grouptune predict --input FILE` answers a whole file."
                )
                rows = rows[: tryit.MAX_ROWS]
        except GroupTuneError as err:
            st.error(str(err))
if rows:
    st.markdown("**The prompt** (a text over the token budget is cut when it is scored)")
    st.code(task.render(rows[0]), language=None)

left, right = st.columns([1, 3])
if left.button("Answer", type="primary", icon=":material/send:", disabled=not rows, key="try_go"):
    try:
        job = tryit.submit_request(ws, task.name, rows)
        st.toast(f"Queued job {job}", icon=":material/schedule:")
    except GroupTuneError as err:
        st.error(str(err))
typed = [rows[0]["text"]] if mode == "Type a text" and rows else []
right.caption("The same from a terminal:")
right.code(cli_text(command("predict", *typed, task=task.name, explain=True), ws), language="bash")

request = tryit.latest_request(ws)
if request is None:
    st.stop()
st.divider()
result, job = request["result"], request["job"]
st.subheader(f"Answer ({request['task']}, {request['rows']} row(s))")
if result is None:
    if job is not None and job["state"] in ACTIVE:
        st.info("Answering: the job starts python, torch and the model, then scores the rows.")
        _common.live_jobs(ws, stages=("predict",))
    else:
        state = job["state"] if job else "is gone"
        st.error(f"No answer: the job {state}. {(job or {}).get('error') or ''}")
    st.stop()
if result["accuracy"] is not None:
    st.caption(f"Accuracy on the {result['labelled']} labelled row(s): {result['accuracy']:.3f}")
for row in result["rows"]:
    if len(result["rows"]) > 1:
        st.markdown(f"**Row {row['row']}**")
    st.code(row["prompt"], language=None)
    a, b = st.columns(2)
    p = row["probabilities"][row["answer"]]
    a.metric("Ensemble answer", row["answer"], f"p = {p:.3f}", "off", delta_arrow="off")
    base = row.get("baseline")
    b.metric(
        "Single adapter (baseline) answer",
        base["answer"] if base else "—",
        f"p = {base['probabilities'][base['answer']]:.3f}" if base else None,
        "off",
        delta_arrow="off",
    )
    a, b = st.columns(2)
    bar = st.column_config.ProgressColumn(
        "probability", min_value=0.0, max_value=1.0, format="%.3f"
    )
    a.dataframe(
        tryit.probabilities_frame(row, result["labels"]),
        hide_index=True,
        column_config={"probability": bar},
        key=f"try_probs_{row['row']}",
    )
    weight = st.column_config.NumberColumn(
        "weight", format="%.3f", help="a group adapter's weight for this task; a round's step"
    )
    b.dataframe(
        tryit.votes_frame(row),
        hide_index=True,
        column_config={"weight": weight, "p(answer)": st.column_config.NumberColumn(format="%.3f")},
        key=f"try_votes_{row['row']}",
    )
