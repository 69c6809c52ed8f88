"""Snakemake rule `benchmark`. From the shell: python workflow_scripts/benchmark.py --help."""

from lungseg.bench.memory import run_benchmark
from lungseg.core.rule import run_rule

run_rule(run_benchmark, globals())
