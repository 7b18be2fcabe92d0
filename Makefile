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

# The local profile runs GPU jobs one per GPU. Without a GPU they run on the CPU, as many at once as the
# cores allow. The demo starts its generators' chains (through their samples) first: Stable Diffusion's is
# the longest, and the mask-guided arm's last jobs then fill the other core (docs/benchmarks.md).
GPUS ?= $(or $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU'),0)
GPU_SLOTS := $(if $(filter 0,$(GPUS)),$(CORES),$(GPUS))

demo: $(BIN)/snakemake
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --resources gpu=$(GPU_SLOTS) --prioritize collect_samples collect_mask_guided
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
