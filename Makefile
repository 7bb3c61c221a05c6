# Set-up is two commands: `make demo` (the main job) and `make test` (the tests). Each creates
# .venv/ and installs what it needs on first use, on a machine that has nothing but Python.

PYTHON ?= python3
# torch is installed first, pinned: an unpinned `torch` pulls a multi-GB CUDA build on CPU
# machines. On a GPU cluster, override it (e.g. TORCH_SPEC="torch==2.13.0 --index-url ...").
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

# CPU defaults; the config decides devices on a GPU cluster.
export DS_ACCELERATOR ?= cpu
export RAY_AUTH_MODE ?= disabled
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S ?= 0.5

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) jobs/demo.py

bench: $(BENCH_STAMP)
	$(PY) jobs/bench_all.py

clean:
	rm -rf $(VENV) .cache runs
