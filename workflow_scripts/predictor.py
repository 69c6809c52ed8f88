"""Snakemake rule `predictor`. Shell: python workflow_scripts/predictor.py -h."""

from lungseg.core.rule import run_rule
from lungseg.predict.bundle import write_predictor

run_rule(write_predictor, globals())
