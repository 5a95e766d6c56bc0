# clipbranches: `make demo` and `make test` work on a fresh machine (Python 3.11 + make).
# `setup` is idempotent: the install only reruns when pyproject.toml or constraints.txt change.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo engine-demo chromium test bench clean-venv

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e ".[app,test,dist]"
	touch $@

# The dashboard on the committed default catalog (data/demo), served by Voila on 127.0.0.1.
# VISITORS: how many people will open it at once (a class: make demo VISITORS=30); that many
# kernels are started and warmed before they arrive (see README, "Serving a class").
PORT ?= 8866
VISITORS ?= 1
demo: setup
	@echo "clipbranches dashboard: open http://127.0.0.1:$(PORT)/ in your browser (Ctrl-C stops it)"
	$(PY) -m clipbranches_widgets serve --visitors=$(VISITORS) --port=$(PORT)

# The engine alone, in the terminal (no catalog, no browser).
engine-demo: setup
	$(PY) -m clipbranches_widgets.demo_engine

# pytest's own exit status is also written to $(VENV)/.pytest-exitcode (make itself exits 2 on
# any failure); .ci/run exits with it.
# Debian's Chromium for the real-browser dashboard test (Playwright cannot download browsers).
chromium:
	@test -x /usr/bin/chromium || { SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: setup chromium
	@rm -f $(VENV)/.pytest-exitcode
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; echo $$rc > $(VENV)/.pytest-exitcode; exit $$rc

bench: setup
	$(PY) benchmarks/bench_engine.py

clean-venv:
	rm -rf $(VENV)
