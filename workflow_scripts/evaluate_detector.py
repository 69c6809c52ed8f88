"""Snakemake rule `evaluate_detector`. Shell: python workflow_scripts/evaluate_detector.py -h."""

from lungseg.core.rule import run_rule
from lungseg.evaluation.detection import evaluate_detector

run_rule(evaluate_detector, globals())
