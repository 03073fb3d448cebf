# Quick start: `make demo` (train the study-2 sorting models) and `make test`.
# Both create .venv with the CPU build of torch pinned; on a GPU machine install your own torch
# into .venv first (any torch >= 2.2) and the pin is skipped.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
RUNS   ?= runs

.PHONY: demo test install install-dev clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.torch: | $(VENV)/bin/python
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	touch $@

$(VENV)/.core: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e '.[report]'
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.core

install: $(VENV)/.core
install-dev: $(VENV)/.dev

demo: $(VENV)/.core
	for level in no mid high; do \
	  $(VENV)/bin/toylens train configs/sort-$$level-decay.yaml --out $(RUNS) --resume || exit $$?; \
	done
	$(VENV)/bin/toylens summary $(RUNS)/sort-no-decay $(RUNS)/sort-mid-decay $(RUNS)/sort-high-decay

test: $(VENV)/.dev
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache
