# Two commands do all the set-up on a fresh machine (see README):
#   make demo   installs the kit into .venv on first use and runs the offline demo
#   make test   installs the kit with its test and adapter extras and runs the tests (notebooks included)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test notebooks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch is pinned (pyproject.toml) so that pip takes the CPU build rather than the CUDA one
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.full: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[adapters,notebooks,test]"
	touch $@ $(VENV)/.core

demo: $(VENV)/.core
	$(BIN)/cte-kit demo

test: $(VENV)/.full
	$(BIN)/python -m pytest $(PYTEST_ARGS)

notebooks: $(VENV)/.full
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) cte_demo .pytest_cache
