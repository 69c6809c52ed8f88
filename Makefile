# Two entry points: `make run` (whole workflow on the built-in sample data) and `make test`.
# Both bootstrap a project venv in .venv/ from the fully pinned requirements.lock.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lungseg-installed
# Every core of the machine unless told otherwise (make run CORES=4).
CORES ?= $(shell nproc 2>/dev/null || echo 2)
# Which torch build the venv gets (scripts/install-torch.sh): auto (CUDA when nvidia-smi sees a
# GPU), cpu or cuda. A changed choice reinstalls the venv's packages (.venv/.torch-choice).
LUNGSEG_TORCH ?= auto
export LUNGSEG_TORCH
TORCH_CHOICE := $(VENV)/.torch-choice
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: FORCE all venv nnunet bench-nnunet system-deps run test test-fast lint pytest dag clean lock

all: test

# The venv is rebuilt when a lock file, pyproject.toml or the torch choice changes (stamp older
# than them). install-lock.sh: the lock with --no-deps, torch (install-torch.sh), then
# pyradiomics-bhklab (sdist only) built without build isolation against the pinned numpy.
$(STAMP): requirements.lock requirements-torch-cpu.lock requirements-torch-cuda.lock \
		pyproject.toml scripts/install-lock.sh scripts/install-torch.sh $(TORCH_CHOICE)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	scripts/install-lock.sh $(BIN)/python --quiet
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# Optional: nnU-Net v2, the peer of the crop models (lungseg bench-nnunet, docs/nnunet.md).
# Its pinned packages, --no-deps: the venv's torch stays. make test needs it, make run does not.
NNUNET_STAMP := $(VENV)/.nnunet-installed
$(NNUNET_STAMP): $(STAMP) requirements-nnunet.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -r requirements-nnunet.lock
	touch $(NNUNET_STAMP)

nnunet: $(NNUNET_STAMP)

# nnU-Net trained on the crops and split of make run, scored like the crop models (CPU: ~12 min
# for its 1-epoch trainer on 2 cores): results/nnunet/evaluation.csv and summary.csv.
bench-nnunet: nnunet
	$(BIN)/lungseg bench-nnunet --device cpu --threads $(CORES)

# Rewritten only when LUNGSEG_TORCH differs from the last install's, so that only a change
# reinstalls.
$(TORCH_CHOICE): FORCE
	@mkdir -p $(VENV)
	@echo "$(LUNGSEG_TORCH)" | cmp -s - $@ || echo "$(LUNGSEG_TORCH)" > $@

# The whole workflow, then the HTML report of what it made.
run: venv
	$(BIN)/snakemake --profile profiles/default --cores $(CORES)
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) --report results/report.html

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/snakemake --lint --cores 1

# SLURM + munge for the cluster test (tests/test_slurm.py); apt-get, only when missing and root.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then scripts/install-slurm.sh; \
	else echo "system-deps: not root or no apt-get; SLURM test skips unless SLURM is installed"; fi

pytest: venv nnunet system-deps
	$(BIN)/pytest

test: lint pytest

# Development tier: everything but the whole-workflow runs (tests marked slow), on every core.
test-fast: venv
	$(BIN)/pytest -m "not slow" -n $(CORES)

# Rule graph for the README (graphviz's dot). The rules behind the index and split checkpoints
# (convert, detection_volume, predict) show only once those have run, so they run first.
dag: venv
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) results/split/patients.csv
	$(BIN)/snakemake --rulegraph --cores 1 | dot -Tpng > docs/rulegraph.png

# Freeze the current venv into the lock file (after a deliberate upgrade). torch and its CUDA
# packages stay out: they are pinned by build in requirements-torch-*.lock; so do nnU-Net's
# (requirements-nnunet.lock).
lock: venv
	{ sed -n '1,/^# Regenerate/p' requirements.lock; \
	  $(BIN)/python -m pip freeze --exclude-editable \
	    | grep -viE "^($$(sed -n 's/^\([A-Za-z0-9_.-]*\)=.*/\1/p' requirements-torch-cuda.lock \
	      requirements-nnunet.lock | paste -sd'|'))=="; \
	  echo "setuptools==$$($(BIN)/python -c 'import setuptools; print(setuptools.__version__)')"; \
	} > requirements.lock.new && mv requirements.lock.new requirements.lock

clean:
	rm -rf results logs benchmarks .snakemake
