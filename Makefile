# Two commands on a fresh machine:  `make demo` (whole workflow on the built-in demo data) and
# `make test` (the test suite). Both create .venv and install everything they need on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test lint format dag clean

$(BIN)/snakemake: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/snakemake
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)

test: $(BIN)/snakemake
	$(BIN)/pytest -q

lint: $(BIN)/snakemake
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint --cores 1

format: $(BIN)/snakemake
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/snakefmt Snakefile rules

dag: $(BIN)/snakemake
	$(BIN)/snakemake --rulegraph --cores 1 | dot -Tsvg > docs/rulegraph.svg

clean:
	rm -rf results logs .snakemake
