"""GroupTune engine: fine-tune one language model on many datasets with an ensemble of group adapters.

The engine is a plain library (no Streamlit). Its packages are the method's steps, in the order
data flows, each importing only from those before it (pyproject.toml's import-linter contracts):
data -> models -> gradients -> estimate | grouping -> train -> ensemble | validate -> report
-> views (the dashboard's view-models); `core.pipeline` wires them for the CLI and the jobs, and
`core.stages` is the one table of the pipeline's stages.
"""

__version__ = "0.1.0"
