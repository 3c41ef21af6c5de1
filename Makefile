# Two entry points for a fresh machine: `make demo` and `make test`. Both go through `make setup`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test clean

setup: $(STAMP)

# torch==2.13.0 first: a plain `torch` requirement on an empty venv would pull a CUDA build of several GB.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/finetune-bert demo

# The stage layers (pyproject.toml, [tool.importlinter]) first: seconds, and a broken layer says which import.
test: setup
	$(VENV)/bin/lint-imports --no-cache
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info
