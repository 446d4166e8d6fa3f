# One entry point. `make repro` runs the pipeline, `make test` the whole test suite; both set up
# the virtual environment first (pinned by constraints.txt, so a fresh install takes minutes).
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

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned stack into $(VENV) (a few minutes the first time)"
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]' > $(VENV)/install.log 2>&1 \
	  || { grep -v 'is ignored: it is neither' $(VENV)/install.log | tail -n 30; exit 1; }
	$(BIN)/python -c "import moepipe, torch, dvc, mlflow, prefect, albumentations"
	touch $@

repro: setup
	$(BIN)/dvc repro

lint: setup
	$(BIN)/ruff check .

test: setup lint
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
