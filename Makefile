# Two commands for a newcomer: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIPELINE ?= d2nwg
SHELL := bash
.SHELLFLAGS := -o pipefail -c

export KEDRO_DISABLE_TELEMETRY := 1
export DVC_NO_ANALYTICS := 1
# every target (and the `kedro run` inside each DVC stage) finds the venv's tools without
# activating it
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint format repro repro-gpu viz dag bench clean-data tools

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements.lock -e ".[dev]" \
	  2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $(STAMP)

run: $(STAMP)  ## set up + kedro run the headline pipeline on the embedded default data
	$(BIN)/kedro run --pipelines=$(PIPELINE)

test: $(STAMP)  ## set up + lint + the whole test suite
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

repro: $(STAMP)  ## reproduce every DVC stage (cached) on the embedded default
	$(BIN)/dvc repro

repro-gpu: $(STAMP)  ## every DVC stage with conf/gpu, as a DVC experiment (on a CUDA box)
	$(BIN)/dvc exp run -S kedro_env=gpu -S data_root=data/gpu

viz: $(STAMP)  ## build the kedro-viz site into build/ (serve: python -m http.server -d build)
	$(BIN)/kedro viz build
	$(BIN)/python benchmarks/dag_png.py --site build --complete-only

dag: $(STAMP)  ## redraw docs/dag.png and docs/dag_<pipeline>.png from the current pipelines
	$(BIN)/python benchmarks/dag_png.py

bench: $(STAMP)  ## speed benchmarks: print tables, write benchmarks/results/*.json
	$(BIN)/python benchmarks/zoo_throughput.py

tools:  ## the tools every target uses (from .venv, no activation needed)
	@command -v python kedro dvc ruff
