"""Snakemake rule `crops_overview`. Shell: python workflow_scripts/crops_overview.py --help."""

from lungseg.core.rule import run_rule
from lungseg.figures.crops import run_crops_overview

run_rule(run_crops_overview, globals())
