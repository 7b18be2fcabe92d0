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

# The demo on 2 CPU cores is bound by its CPU work (docs/benchmarks.md), so it keeps both cores busy:
# - the local profile runs GPU jobs one at a time (one GPU); without a GPU they share the cores instead;
# - its light GPU jobs (inference, the small segmenter) take one core each, so two run side by side;
# - its generators' chains (through their samples) start first: Stable Diffusion's is the longest.
GPUS = $(or $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU'),0)
DEMO_GPUS = $(if $(filter 0,$(GPUS)),--resources gpu=$(CORES))
DEMO_THREADS := embed_images sample_images sample_mask_guided edit_images train_segmenter mask_faithfulness \
	conditional_fidelity counterfactual_soundness
DEMO_RUN = $(DEMO_GPUS) --set-threads $(DEMO_THREADS:%=%=1) --prioritize collect_samples collect_mask_guided

demo: $(BIN)/snakemake
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) $(DEMO_RUN)
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --report results/report.html

test: $(BIN)/snakemake
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n $(CORES) --dist loadscope --no-loadscope-reorder

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

# `snakemake --profile slurm` (a profile by name) searches ./slurm, then Snakemake's user config folder
# ($XDG_CONFIG_HOME/snakemake, default ~/.config/snakemake; platformdirs), then /etc/xdg/snakemake.
# install-profile links profiles/slurm there, and never replaces a profile the user already has.
SNAKEMAKE_PROFILES = $${XDG_CONFIG_HOME:-$$HOME/.config}/snakemake
.PHONY: install-profile
install-profile:
	@target="$(SNAKEMAKE_PROFILES)/slurm"; source="$(CURDIR)/profiles/slurm"; \
	if [ -L "$$target" ] && [ "$$(readlink "$$target")" = "$$source" ]; then \
		echo "$$target already links to $$source"; \
	elif [ -e "$$target" ] || [ -L "$$target" ]; then \
		echo "error: $$target exists and is not this checkout's profile; leaving it alone." >&2; \
		echo "Move it away and run 'make install-profile' again, or use --profile $$source" >&2; \
		exit 1; \
	else \
		mkdir -p "$$(dirname "$$target")" && ln -s "$$source" "$$target" && \
		echo "installed $$target -> $$source: 'snakemake --profile slurm' now uses it"; \
	fi
