"""Snakemake rule `cascade`. Shell: python workflow_scripts/cascade.py -h."""

from lungseg.core.rule import run_rule
from lungseg.evaluation.cascade_run import run_cascade

run_rule(run_cascade, globals())
