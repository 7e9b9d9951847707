# Two commands do all the set-up on a fresh machine (see README):
#   make demo   installs the kit into .venv on first use and runs the offline demo
#   make test   installs the kit with its test and adapter extras and runs the tests (notebooks included)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# pip options for the installs, e.g. PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_ARGS ?=
# the exact CPU builds (torch, TensorFlow) for this machine and CI; users get pyproject.toml's ranges
CONSTRAINTS := constraints-cpu.txt

.PHONY: demo test notebooks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# the constraints pin torch to the CPU build rather than the CUDA one
$(VENV)/.core: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(PIP_ARGS) -c $(CONSTRAINTS) -e .
	touch $@

# StarDist's TensorFlow is not in the adapters extra (users bring theirs); here it is the CPU build
$(VENV)/.full: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(PIP_ARGS) -c $(CONSTRAINTS) -e ".[adapters,notebooks,test]" tensorflow-cpu
	touch $@ $(VENV)/.core

demo: $(VENV)/.core
	$(BIN)/cte-kit demo

# The real-browser test (marker `browser`, a few minutes) runs beside the rest in a second pytest
# process; its report follows the main one (also in test-artifacts/browser.log). Exit status 5 of that
# process means PYTEST_ARGS selected no browser test.
test: $(VENV)/.full
	@mkdir -p test-artifacts
	@$(BIN)/python -m pytest -m browser $(PYTEST_ARGS) > test-artifacts/browser.log 2>&1 & browser=$$!; \
	$(BIN)/python -m pytest -m "not browser" $(PYTEST_ARGS); main=$$?; \
	wait $$browser; status=$$?; [ $$status -eq 5 ] && status=0; \
	echo "---- browser test (tests/test_browser.py) ----"; cat test-artifacts/browser.log; \
	[ $$main -eq 0 ] && [ $$status -eq 0 ]

notebooks: $(VENV)/.full
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) cte_demo .pytest_cache test-artifacts
