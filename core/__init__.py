"""GroupTune engine: fine-tune one language model on many datasets with an ensemble of group adapters.

The engine is a plain library (no Streamlit). Stages, in the order data flows:
tasks -> models -> features (+ projection, store) -> estimator -> affinity -> grouping
-> training -> ensemble -> evaluation -> report. `core.pipeline` wires them for the CLI and jobs.
"""

__version__ = "0.1.0"
