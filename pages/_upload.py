"""The Datasets page's upload form: pick the columns from a preview, set the template and the
answer words, see one prompt and its token count, then add the task. A view over core.data.upload
(the draft) and core.views.datasets.save_upload (which stores nothing unless the task loads)."""

from __future__ import annotations

import streamlit as st

from core.data import upload
from core.errors import GroupTuneError
from core.views.datasets import UPLOAD_TYPES, save_upload
from core.workspace import Workspace

MAX_LABELS = 50  # more distinct values than this: almost surely not the label column
PICKERS = ("ds_up_text", "ds_up_pair", "ds_up_label", "ds_up_split", "ds_up_template", "ds_up_word")


@st.cache_data(max_entries=4, show_spinner=False)
def _read(filename: str, data: bytes):
    return upload.read_upload(filename, data)


def _none(column: str | None, what: str) -> str:
    return f"(none: {what})" if column is None else column


def _columns(table) -> dict:
    """The column pickers, preselected with core.data.upload's guesses."""
    guess, cols = upload.guesses(table), table.columns
    optional = [None, *cols]
    c1, c2, c3, c4 = st.columns(4)
    return {
        "text": c1.selectbox("Text column", cols, cols.index(guess["text"]), key="ds_up_text"),
        "text_pair": c2.selectbox(
            "Second text (text_pair)", optional, optional.index(guess["text_pair"]),
            format_func=lambda c: _none(c, "one text"), key="ds_up_pair",
        ),
        "label": c3.selectbox("Label column", cols, cols.index(guess["label"]), key="ds_up_label"),
        "split": c4.selectbox(
            "Split column", optional, optional.index(guess["split"]),
            format_func=lambda c: _none(c, "split 60/15/25"), key="ds_up_split",
            help="A column whose values are train, val or test.",
        ),
    }  # fmt: skip


def _prompt_inputs(table, choice: dict, model: str, where) -> tuple[str, dict] | None:
    """The template and one answer word per label (prefilled; keyed on the columns, so picking
    another column starts from its own suggestions). None when the label column is implausible."""
    counts = upload.label_table(table, choice["label"])
    left, right = where
    left.caption("Rows per label")
    left.dataframe(counts, hide_index=True, key="ds_up_counts")
    if len(counts) > MAX_LABELS:
        right.warning(
            f"`{choice['label']}` has {len(counts)} distinct values: pick the column that holds "
            "the labels."
        )
        return None
    pair = bool(choice["text_pair"])
    template = right.text_area(
        "Prompt template (`{text}`, `{text_pair}`; the answer word follows it)",
        upload.default_template(choice["text_pair"]),
        key=f"ds_up_template:{pair}",
    )
    words = {}
    for label, word in upload.suggested_words(table, choice["label"], model).items():
        words[label] = right.text_input(
            f"Answer word for label `{label}`", word, key=f"ds_up_word:{choice['label']}:{label}"
        )
    return template, words


def _show_example(task, model: str) -> None:
    ex = upload.example(task, model)
    tokens = f"{ex['tokens']} tokens" if ex["tokens"] is not None else "token count unavailable"
    st.caption(f"The first training row as {model} sees it ({tokens}), then the answer words:")
    st.code(ex["prompt"], language="text")
    st.markdown(" · ".join(f"`{lab}` → `{w!r}`" for lab, (w, _) in ex["words"].items()))
    for label, (word, n) in ex["words"].items():
        if n is not None and n != 1:
            st.info(
                f"Answer word {word!r} (label `{label}`) is {n} tokens for {model}: it is scored "
                "by the sum of its tokens' log-probabilities, which costs a forward more per row "
                "than a one-token word."
            )
    if ex["tokens"] is None:
        st.caption(f"{model} is not on this machine yet (`grouptune fetch-model {model}`).")


def _forget_choices(file) -> None:
    """A new file starts from its own guesses: drop the pickers' state of the previous one."""
    seen = (file.name, file.size)
    if st.session_state.get("_ds_up_seen") != seen:
        for key in [k for k in st.session_state if str(k).startswith(PICKERS)]:
            del st.session_state[key]
        st.session_state["_ds_up_seen"] = seen


def upload_form(ws: Workspace | None, model: str) -> None:
    st.caption(
        "CSV, TSV, JSONL or Parquet. Pick which columns hold the text (and an optional second "
        "text) and the label; other columns are ignored. Without a split column the rows are "
        f"split 60/15/25 into train, val and test. Files up to "
        f"{st.get_option('server.maxUploadSize')} MB (server.maxUploadSize in "
        ".streamlit/config.toml)."
    )
    name = st.text_input("Task name (letters, digits, - and _)", key="ds_up_name")
    file = st.file_uploader("Data file", type=list(UPLOAD_TYPES), key="ds_up_file")
    if "ds_added" in st.session_state:
        st.success(st.session_state.pop("ds_added"))
    if ws is None:
        st.info("Save the experiment first (bottom of the page); uploads are kept inside it.")
        return
    if file is None:
        return
    _forget_choices(file)
    task, choice = None, {}
    try:
        table = _read(file.name, file.getvalue())
        st.dataframe(upload.preview_frame(table), hide_index=True, key="ds_up_preview")
        st.caption(f"{len(table.rows)} rows; the first {upload.PREVIEW_ROWS} above.")
        choice = _columns(table)
        inputs = _prompt_inputs(table, choice, model, st.columns([1, 2]))
        if inputs is not None:
            template, words = inputs
            spec = upload.draft_spec(name, choice, template, words)
            task = upload.draft_task(table, spec)
    except GroupTuneError as err:  # the file, row and field at fault; nothing is saved
        st.error(str(err))
    if task is not None:
        for note in task.notes:
            st.warning(f"Note: {note}")
        _show_example(task, model)
        st.caption("The same task in a config's `tasks:` (then `grouptune init --config ...`):")
        st.code(upload.config_entry(spec, file.name), language="yaml")
    clicked = st.button("Add task", disabled=task is None or not name, key="ds_up_add")
    if clicked and task is not None:
        try:
            added = save_upload(
                ws, name, file.name, file.getvalue(),
                columns={k: choice[k] for k in ("text", "text_pair", "label")},
                split=choice["split"], template=task.template, labels=task.labels,
            )  # fmt: skip
            rows = sum(len(added.rows(s)) for s in added.splits)
            st.session_state["ds_added"] = f"Added {added.name}: {rows} rows. Pick it above."
            st.rerun()
        except GroupTuneError as err:
            st.error(str(err))
