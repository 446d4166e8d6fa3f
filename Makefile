# One entry point. `make repro` runs the pipeline, `make test` the whole test suite; both set up
# the virtual environment first (pinned by constraints.txt; uv installs it in under a minute).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup repro lint test test-unit test-e2e bench preview clean
.DEFAULT_GOAL := help

help:
	@echo "make repro   set up, then run the pipeline (dvc repro) on the embedded default data"
	@echo "make test    set up, then lint (ruff) and run the whole test suite"
	@echo "make lint    ruff check (lint + import order, configured in pyproject.toml)"
	@echo "make bench   benchmarks (images/s for scrape, curate, preprocess)"

setup: $(VENV)/.installed

# uv (pinned here; the stack's pins stay in constraints.txt) installs the stack in about a minute
# where pip takes nearly three; it comes from the same sources pip is configured with
# (tools/with_pip_sources.py). Without uv, or with INSTALLER=pip, pip installs as before.
UV_VERSION ?= 0.13.9
INSTALLER ?= uv

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned stack into $(VENV) (about a minute with uv, a few with pip)"
	if [ "$(INSTALLER)" = uv ] && $(BIN)/python -m pip install -q uv==$(UV_VERSION) > $(VENV)/install.log 2>&1; then \
	  $(BIN)/python tools/with_pip_sources.py $(BIN)/uv pip install --python $(BIN)/python \
	    -c constraints.txt -e '.[dev]' >> $(VENV)/install.log 2>&1 \
	  || { tail -n 30 $(VENV)/install.log; echo "uv failed (log: $(VENV)/install.log); INSTALLER=pip uses pip"; exit 1; }; \
	else \
	  [ "$(INSTALLER)" = pip ] || echo "uv $(UV_VERSION) could not be installed; installing with pip"; \
	  $(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]' >> $(VENV)/install.log 2>&1 \
	  || { grep -v 'is ignored: it is neither' $(VENV)/install.log | tail -n 30; exit 1; }; \
	fi
	$(BIN)/python -c "import moepipe, torch, dvc, mlflow, prefect, albumentations"
	touch $@

repro: setup
	$(BIN)/dvc repro

lint: setup
	$(BIN)/ruff check .

test: setup lint
	@# tests/e2e/test_studio_browser.py drives Debian's chromium (Playwright cannot download its own here).
	@test -x /usr/bin/chromium || { if [ "$$(id -u)" = 0 ]; then echo "installing chromium for the studio's browser test"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "make test needs /usr/bin/chromium for the studio's browser test: run sudo apt-get install -y chromium" >&2; \
	  exit 1; fi; }
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

bench: setup
	$(BIN)/python bench/scrape_throughput.py
	$(BIN)/python bench/curate_throughput.py
	$(BIN)/python bench/preprocess_throughput.py

preview: setup
	$(BIN)/python -m moepipe.scrape.sources.synthetic.preview docs/preview.png

clean:
	rm -rf data reports .dvc/tmp/runs
