"""Snakemake rule `bench_detection`. Shell: python workflow_scripts/bench_detection.py -h."""

from lungseg.core.rule import run_rule
from lungseg.detection.bench import summarise_seeds

run_rule(summarise_seeds, globals())
