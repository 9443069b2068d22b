# GroupTune set-up. `make demo` = install + provision the model + open the dashboard on the
# sample data; `make test` = install dev extras + lint + the whole test suite. Both idempotent.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
HOST    ?= 127.0.0.1
PORT    ?= 8501

.PHONY: demo test install install-dev model lint format app clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Install torch first: with no torch present, pip resolving peft/bitsandbytes would pull a
# multi-GB CUDA build. A torch already in the venv (e.g. a user's CUDA build) is kept.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

model: install
	$(BIN)/grouptune fetch-model smollm2-135m

# The demo workspace: a copy of the committed result of a real `grouptune run` of quick.yaml, a
# scaled-down member of the paper's protocol (so every page has something to show at once);
# `grouptune init` re-checks it offline. Its gradient features (exact B-gradients, ~90 MB) are not
# committed: `grouptune gradients --background` queues their recompute as a background job (about
# 4 minutes on 2 cores; nothing is queued when they are fresh) and returns at once, so the
# dashboard opens straight away; the Groups page's what-if and the Affinity page follow the job
# until the features are back, under the same key, so the committed estimates stay fresh.
workspaces/quick/config.yaml:
	mkdir -p workspaces
	if [ -d sample_data/workspaces/quick ]; then cp -rp sample_data/workspaces/quick workspaces/quick; fi

demo: model workspaces/quick/config.yaml
	$(BIN)/grouptune init --config sample_data/quick.yaml --workspace workspaces/quick
	$(BIN)/grouptune gradients --workspace workspaces/quick --background
	$(BIN)/grouptune app --workspace workspaces/quick --host $(HOST) --port $(PORT)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install-dev model lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) workspaces .pytest_cache
