# clipbranches: `make demo` and `make test` work on a fresh machine (Python 3.11 + make).
# `setup` is idempotent: the install only reruns when pyproject.toml or constraints.txt change.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test bench clean-venv

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e ".[app,test,dist]"
	touch $@

# For now the engine demo; a later milestone starts the Voila dashboard here.
demo: setup
	$(PY) -m clipbranches_widgets.engine.demo

# pytest's own exit status is also written to $(VENV)/.pytest-exitcode (make itself exits 2 on
# any failure); .ci/run exits with it.
test: setup
	@rm -f $(VENV)/.pytest-exitcode
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; echo $$rc > $(VENV)/.pytest-exitcode; exit $$rc

bench: setup
	$(PY) benchmarks/bench_engine.py

clean-venv:
	rm -rf $(VENV)
