# Two entry points: `make run` (whole workflow on the built-in sample data) and `make test`.
# Both bootstrap a project venv in .venv/ from the fully pinned requirements.lock.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lungseg-installed
CORES ?= 2
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: all venv system-deps run test test-fast lint pytest dag clean lock

all: test

# The venv is rebuilt when the lock file or pyproject.toml changes (stamp older than them).
# install-lock.sh: the lock with --no-deps, then pyradiomics-bhklab (sdist only) built without
# build isolation against the pinned numpy (see the script).
$(STAMP): requirements.lock pyproject.toml scripts/install-lock.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	scripts/install-lock.sh $(BIN)/python --quiet
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

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

pytest: venv system-deps
	$(BIN)/pytest

test: lint pytest

# Development tier: everything but the whole-workflow runs (tests marked slow), on every core.
test-fast: venv
	$(BIN)/pytest -m "not slow" -n $(CORES)

# Rule graph for the README (after `make run`: convert, behind the index checkpoint, shows then).
dag: venv
	$(BIN)/snakemake --rulegraph --cores 1 | dot -Tpng > docs/rulegraph.png

# Freeze the current venv into the lock file (after a deliberate upgrade).
lock: venv
	{ sed -n '1,/^# Regenerate/p' requirements.lock; \
	  $(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; \
	  echo "setuptools==$$($(BIN)/python -c 'import setuptools; print(setuptools.__version__)')"; \
	} > requirements.lock.new && mv requirements.lock.new requirements.lock

clean:
	rm -rf results logs benchmarks .snakemake
