"""Home: where the experiment stands and what to do next."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import yaml

st.title("GroupTune")
st.caption(
    "Fine-tune one language model on many datasets: group the tasks, train one adapter per group."
)

ws = Path(st.session_state.get("workspace") or ".")
config_path = ws / "config.yaml"
if not config_path.exists():
    st.info("Pick or create an experiment workspace to begin.")
    st.stop()

cfg = yaml.safe_load(config_path.read_text(encoding="utf-8"))
st.subheader(f"Experiment `{cfg.get('name')}`")
c1, c2, c3 = st.columns(3)
c1.metric("Tasks", len(cfg.get("tasks", [])))
c2.metric("Model", cfg.get("model", {}).get("name", "?"))
c3.metric("Quantisation", cfg.get("model", {}).get("quantization", "?"))
st.write("Tasks:", ", ".join(t["name"] if isinstance(t, dict) else t for t in cfg.get("tasks", [])))
