# `make demo` and `make test` do all set-up on a fresh machine (see README.md).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[export,dev]'
	# GE2E weights ship in this wheel; --no-deps because its webrtcvad needs an old setuptools
	$(VENV)/bin/pip install -q --no-deps resemblyzer==0.1.4
	touch $(STAMP)

demo: $(STAMP)
	bash demo/run.sh

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/store_bench.py
	$(VENV)/bin/python bench/runtime_bench.py
	$(VENV)/bin/python bench/export_bench.py
