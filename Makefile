# Two entry points for a newcomer: `make lab` and `make test`. Both do all of the set-up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv lab demo-lab test chromium quality conformance parity parity-reference bench bench-hub bench-engine bench-e2e bench-memory support-table clean

$(STAMP): pyproject.toml extension/pyproject.toml extension/package.json
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from the CPU wheel on this disk: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The JupyterLab extension: hatch-jupyter-builder builds its frontend with the venv's jlpm (hence PATH); no build
	# isolation, so pip does not install a second JupyterLab just to build it.
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pip install -q --no-build-isolation -e ./extension
	touch $(STAMP)

venv: $(STAMP)

# Jupyter refuses to start as root unless told; containers and cloud notebooks often run as root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jupyter lab $(ROOT_FLAG) notebooks/

# `make lab` without network: a demo Hub on 127.0.0.1 (tests/demo_hub.py) serves a small MiniLM and demo adapters under
# the tutorials' own Hub ids; JupyterLab and its kernels use it (HF_ENDPOINT, WORKBENCH_AH_INDEX_URL, their own HF_HOME,
# so the real Hugging Face cache is untouched). The demo Hub stops with JupyterLab.
demo-lab: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tests/demo_hub.py --run $(BIN)/jupyter lab $(ROOT_FLAG) notebooks/

test: $(STAMP) chromium
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest tests --nbval-lax notebooks

# The browser tests drive Debian's Chromium (never a downloaded browser); without it they are skipped, with the reason.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
			>/tmp/workbench-chromium-install.log 2>&1 \
			|| echo "chromium could not be installed (see /tmp/workbench-chromium-install.log): browser tests will be skipped"; \
	else echo "no /usr/bin/chromium and not root: browser tests will be skipped (apt-get install chromium)"; fi

quality: $(STAMP)
	$(BIN)/ruff check workbench tests benchmarks extension/jupyterlab_adapter_workbench

# The README's support table, from the spec registry (tests/test_support_table.py checks it is current).
support-table: $(STAMP)
	$(BIN)/python -m workbench.core.support

# Regenerates tests/conformance/fixtures with the AdapterHub `adapters` library (own venv, transformers 4.57.6).
conformance:
	$(MAKE) -C tests/conformance fixtures

# API parity: the `adapters` library's own tests against workbench (through parity/alias) and against the real library
# (reference, own venv); writes parity/RESULTS.md. Not part of `make test` (hours on 2 cores). See parity/README.md.
# The tests come from the library's git repository: ADAPTERS_REPO may name a local clone or mirror instead.
# PARITY_SET: core (the parity issue's test files), architectures (issue 12's) or all.
ADAPTERS_REPO ?= https://github.com/adapter-hub/adapters.git
PARITY_SET ?= all
REF_VENV := .venv-parity-ref
# pillow: the vision tests' image processors and CIFAR-10 sample (both venvs). The stamps follow this file, so a
# package added here is installed on the next run.
$(REF_VENV)/.installed: Makefile
	test -x $(REF_VENV)/bin/python || $(PY) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install -q --upgrade pip
	$(REF_VENV)/bin/python -m pip install -q torch==2.13.0
	$(REF_VENV)/bin/python -m pip install -q torch==2.13.0 adapters==1.3.0 transformers==4.57.6 accelerate datasets \
		safetensors pytest parameterized sentencepiece pillow
	touch $@

$(VENV)/.parity: $(STAMP) Makefile
	$(BIN)/python -m pip install -q -e ".[parity]" pillow
	touch $@

# The reference results are kept per test file until the tests or parity/adapters_offline.py change (--resume).
parity-reference: $(REF_VENV)/.installed
	ADAPTERS_REPO=$(ADAPTERS_REPO) parity/fetch_tests.sh
	$(BIN)/python parity/run.py reference --set $(PARITY_SET) --resume --python $(REF_VENV)/bin/python

parity: $(VENV)/.parity parity-reference
	$(BIN)/python parity/run.py workbench --set $(PARITY_SET) --python $(BIN)/python
	$(BIN)/python parity/run.py report

# PEFT is a peer in the benchmark (the `adapters` peer runs in .venv-adapters: make -C tests/conformance venv).
$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	touch $@

bench: $(VENV)/.bench bench-hub
	$(BIN)/python benchmarks/inference_overhead.py

bench-hub: $(STAMP)
	$(BIN)/python benchmarks/hub_listing.py

# Adapter-management scaling (10/100/300 adapters) and Parallel/BatchSplit/per-row speed (PEFT's mixed batches as
# the peer); run on a quiet machine and say so: make bench-engine NOTE="quiet machine, nothing else running"
NOTE ?=
bench-engine: $(VENV)/.bench
	$(BIN)/python benchmarks/engine_scaling.py --note "$(NOTE)"
	$(BIN)/python benchmarks/composition_speed.py --note "$(NOTE)"

# End-to-end SST-2 training against AdapterTrainer (in .venv-adapters, which this gives datasets and accelerate)
# and PEFT; reads ../shared/data/sst2. make bench-e2e NOTE="quiet machine"
ADAPTERS_VENV := .venv-adapters
$(ADAPTERS_VENV)/.bench-e2e:
	$(MAKE) -C tests/conformance venv
	$(ADAPTERS_VENV)/bin/python -m pip install -q torch==2.13.0 datasets accelerate
	touch $@

bench-e2e: $(VENV)/.bench $(ADAPTERS_VENV)/.bench-e2e
	$(BIN)/python benchmarks/e2e_train.py --note "$(NOTE)"

# Training-step memory (adapter vs full vs the `adapters` library; gradient checkpointing at 32 x 512): needs
# .venv-adapters and over 16 GB free. make bench-memory NOTE="quiet machine"
bench-memory: $(STAMP) $(ADAPTERS_VENV)/.bench-e2e
	$(BIN)/python benchmarks/train_memory.py --note "$(NOTE)"

clean:
	rm -rf $(VENV) .pytest_cache
