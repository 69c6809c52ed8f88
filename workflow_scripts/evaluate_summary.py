"""Snakemake rule `evaluate_summary`. Shell: python workflow_scripts/evaluate_summary.py -h."""

from lungseg.core.rule import run_rule
from lungseg.evaluation.evaluate import run_evaluate_summary

run_rule(run_evaluate_summary, globals())
