"""Snakemake rule `bench_detection`. Shell: python workflow_scripts/bench_detection.py -h."""

from lungseg.bench.detection import summarise_seeds
from lungseg.core.rule import run_rule

run_rule(summarise_seeds, globals())
