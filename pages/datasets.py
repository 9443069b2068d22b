"""1 · Datasets: pick sample tasks or upload your own, look at them, save the experiment."""

from __future__ import annotations

import streamlit as st

from core.config import PROJECTIONS
from core.errors import GroupTuneError
from core.report.figures import label_balance_figure, word_length_figure
from core.views.datasets import (
    build_config,
    label_balance,
    load_one_task,
    preview_rows,
    sample_task_names,
    task_overview,
    uploaded_tasks,
    word_lengths,
)
from core.views.workspaces import load_config, save_experiment, workspaces_root
from core.workspace import Workspace
from pages import _common, _upload

MODELS = ["smollm2-135m", "tiny-llama", "tiny-gpt2"]

st.title(":material/dataset: Datasets")
st.caption(
    "Each dataset is a classification task: a text (or a pair of texts), a prompt template, and "
    "one answer word per label. The model answers by putting the most weight on one of them."
)
ws = _common.workspace()
cfg, err = load_config(ws) if ws is not None else (None, None)
if err and ws is not None and ws.config_path.exists():
    st.error(err)
uploads = uploaded_tasks(ws) if ws is not None else {}
options = list(dict.fromkeys([*(cfg.task_names if cfg else []), *uploads, *sample_task_names()]))
default = cfg.task_names if cfg else []
key = f"ds_tasks:{ws.root if ws else ''}"
selected = st.multiselect("Tasks in the experiment", options, default=default, key=key)

with st.expander("Upload your own task (CSV, TSV, JSONL or Parquet)", icon=":material/upload:"):
    _upload.upload_form(ws, cfg.model.name if cfg else MODELS[0])


@st.cache_data(ttl=300, max_entries=64, show_spinner=False)
def load(name: str, root: str | None, stamp: tuple):
    config = load_config(Workspace(root))[0] if root else None
    return load_one_task(name, config, uploaded_tasks(Workspace(root)) if root else {})


files = tuple(sorted((name, path.stat().st_mtime) for name, path in uploads.items()))
loaded, stamp = {}, (ws.config_path.stat().st_mtime if cfg else 0, files)
for task_name in selected:
    try:
        loaded[task_name] = load(task_name, str(ws.root) if ws else None, stamp)
    except GroupTuneError as err:
        st.error(f"Task {task_name}: {err}")
if loaded:
    st.subheader("The tasks")
    st.caption("Rows per split as this experiment uses them (after its row caps).")
    st.dataframe(task_overview(loaded.values()), hide_index=True, key="ds_overview")
    _common.answer_word_warning(loaded.values())
    pick = st.selectbox("Look at one task", list(loaded), key="ds_pick")
    task = loaded[pick]
    left, right = st.columns(2)
    left.plotly_chart(label_balance_figure(label_balance(task), pick), key="ds_balance")
    right.plotly_chart(word_length_figure(word_lengths(task), pick), key="ds_lengths")
    right.caption("Whitespace-separated words: a tokenizer-free proxy (tokens are usually more).")
    st.dataframe(preview_rows(task), hide_index=True, key="ds_rows")
    for note in task.notes:
        st.warning(f"Note ({pick}): {note}")
    st.caption("The first training row as the model sees it, then the answer words:")
    st.code(task.render(task.rows("train")[0]), language="text")
    st.markdown(" · ".join(f"`{lab}` → `{w!r}`" for lab, w in task.labels.items()))

st.subheader("Experiment settings")
with st.form("ds_form"):
    c1, c2, c3 = st.columns(3)
    form = {"name": c1.text_input("Experiment name", cfg.name if cfg else "my-experiment")}
    models = list(dict.fromkeys([*([cfg.model.name] if cfg else []), *MODELS]))
    form["model"] = c2.selectbox("Base model", models)
    quants = ["4bit", "8bit", "none"]
    form["quantization"] = c3.selectbox(
        "Quantisation", quants, quants.index(cfg.model.quantization) if cfg else 0
    )
    d, c = (cfg.data, cfg) if cfg else (None, None)
    cols = st.columns(4)
    for col, key, label in zip(
        cols[:3], ("max_train", "max_val", "max_test"), ("train", "val", "test"), strict=True
    ):
        value = (getattr(d, key) or 0) if d else 0
        form[key] = col.number_input(f"Max {label} rows (0 = all)", 0, 10**6, value)
    form["max_tokens"] = cols[3].number_input("Max tokens", 8, 8192, d.max_tokens if d else 128)
    cols = st.columns(6)
    kinds = list(PROJECTIONS)
    form["projection"] = cols[5].selectbox(
        "Projection", kinds, kinds.index(c.features.projection) if c else 0
    )
    form["k"] = cols[0].number_input(
        "Sketch dim k (0 = 4096)", 0, 65536, (c.features.k or 0) if c else 0
    )
    form["subsets"] = cols[1].number_input("Subsets K", 1, 10**4, c.estimator.subsets if c else 30)
    form["subset_size"] = cols[2].number_input(
        "Subset size", 2, 64, c.estimator.subset_size if c else 3
    )
    form["m"] = cols[3].number_input(
        "Groups m (0 = recommend)", 0, 100, (c.grouping.m or 0) if c else 0
    )
    form["epochs"] = cols[4].number_input("Max epochs", 1, 100, c.training.epochs if c else 10)
    form["tasks"] = selected
    here = st.form_submit_button("Save", type="primary", disabled=cfg is None)
    new = st.form_submit_button("Save as a new experiment")
if here or new:
    try:
        made = build_config(form, cfg, uploads)
        target = ws if here else Workspace(workspaces_root() / made.name)
        if new and target.config_path.exists():
            raise GroupTuneError(f"{target.root} already holds an experiment: pick another name")
        save_experiment(made, target.root)
        st.session_state["workspace"] = str(target.root)
        st.toast(f"Saved {target.config_path}", icon=":material/save:")
        st.rerun()
    except GroupTuneError as err:
        st.error(str(err))
