# Quick start: `make demo` (reproduce study 2 at its quick size, ending with the report) and `make test`.
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

# The study-2 reproduction at its quick size: train the three weight-decay levels, analyse them,
# estimate the LLC of every checkpoint, and write the comparison report (its path is the last line).
demo: $(VENV)/.core
	$(VENV)/bin/toylens reproduce sorting-weight-decay --quick --out $(RUNS)

# Lint, format and type checks first (seconds), then the suite.
test: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache
