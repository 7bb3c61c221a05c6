# Set-up is two commands: `make demo` (the main job) and `make test` (the tests). Each creates
# .venv/ and installs what it needs on first use, on a machine that has nothing but Python.

PYTHON ?= python3
# torch is installed first, pinned: an unpinned `torch` pulls a multi-GB CUDA build on CPU
# machines. On a GPU cluster, override it: pip arguments, split on spaces (e.g.
# TORCH_SPEC="torch==2.13.0 --index-url URL"; put a spec with < or > in single quotes).
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
# Installs are quiet unless they fail: each step appends its output (pip's notices, build
# backends' deprecation text) to INSTALL_LOG, which is printed only when a step fails.
INSTALL_LOG := $(VENV)/install.log
LOGGED = sh -c '"$$@" >>"$(INSTALL_LOG)" 2>&1 || { s=$$?; cat "$(INSTALL_LOG)" >&2; \
	echo "make: install step failed (exit $$s): $$*; full log in $(INSTALL_LOG)" >&2; exit $$s; }' step

# CPU defaults; the config decides devices on a GPU cluster.
export DS_ACCELERATOR ?= cpu
export RAY_AUTH_MODE ?= disabled
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S ?= 0.5

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml
	@echo "installing the dev environment into $(VENV) (log: $(INSTALL_LOG))"
	$(PYTHON) -m venv $(VENV)
	@: > $(INSTALL_LOG)
	@$(LOGGED) $(PY) -m pip install --upgrade pip
	@$(LOGGED) $(PY) -m pip install $(TORCH_SPEC)
	@$(LOGGED) $(PY) -m pip install -e '.[dev]'
	@touch $@

$(BENCH_STAMP): $(STAMP)
	@echo "installing the bench extras into $(VENV) (log: $(INSTALL_LOG))"
	@$(LOGGED) $(PY) -m pip install -e '.[dev,bench]'
	@touch $@

install: $(STAMP)

test: $(STAMP)
	PYTHONFAULTHANDLER=1 $(PY) -m pytest -q

# Extra arguments for the demo, e.g. make demo DEMO_ARGS="--set run.seed=1"
DEMO_ARGS ?=
demo: $(STAMP)
	$(PY) jobs/demo.py $(DEMO_ARGS)

bench: $(BENCH_STAMP)
	$(PY) jobs/bench_all.py

clean:
	rm -rf $(VENV) .cache runs
