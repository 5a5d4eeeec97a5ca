# `make demo` and `make test` do all set-up on a fresh machine (see README.md).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

SYSTEM_STAMP := $(VENV)/.debian-stamp
DEBIAN_PACKAGES := $(shell grep -v '^\s*\(#\|$$\)' debian-packages.txt)

.PHONY: demo test bench default-model vad-model

# debian-packages.txt is the one list of system packages (demo voices, test recordings, espeak-ng).
$(SYSTEM_STAMP): debian-packages.txt
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "apt-get install $$missing"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	mkdir -p $(VENV) && touch $(SYSTEM_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[export,dev]'
	# GE2E weights ship in this wheel; --no-deps because its webrtcvad needs an old setuptools
	$(VENV)/bin/pip install -q --no-deps resemblyzer==0.1.4
	touch $(STAMP)

demo: $(STAMP) $(SYSTEM_STAMP)
	bash demo/run.sh

test: $(STAMP) $(SYSTEM_STAMP)
	$(VENV)/bin/python -m pytest -q

# Re-export the shipped model (runtime/default_model.py: EXPORT_ARGS) and record its hash and graph fingerprint.
default-model: $(STAMP)
	$(VENV)/bin/voxfloat export ge2e --format e4m3 --out runtime/models/ge2e.onnx
	chmod 644 runtime/models/ge2e.onnx
	$(VENV)/bin/python -c "from voxfloat.runtime.default_model import record_default_model as r; print(r())"

# Rebuild the shipped speech detector (runtime/silero.py) from the published Silero VAD model and record its hashes.
vad-model: $(STAMP)
	$(VENV)/bin/python -m voxfloat.export.silero_vad

bench: $(STAMP)
	$(VENV)/bin/python bench/store_bench.py
	$(VENV)/bin/python bench/runtime_bench.py
	$(VENV)/bin/python bench/export_bench.py
	$(VENV)/bin/python bench/vad_bench.py
	$(VENV)/bin/python bench/eval_bench.py
	$(VENV)/bin/python bench/quant_bench.py
	$(VENV)/bin/python bench/ray_bench.py
	$(VENV)/bin/python bench/serve_load.py --workers 1 2 --vad on off
