"""Snakemake rule `evaluate` (one job per model). Shell: python workflow_scripts/evaluate.py -h."""

from lungseg.core.rule import run_rule
from lungseg.evaluation.evaluate import run_evaluate

run_rule(run_evaluate, globals())
