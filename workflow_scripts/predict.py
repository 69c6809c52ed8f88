"""Snakemake rule `predict`. Shell: python workflow_scripts/predict.py -h."""

from lungseg.core.rule import run_rule
from lungseg.predict.pipeline import run_predict_indexed

run_rule(run_predict_indexed, globals())
