"""Snakemake rule `crops`. From the shell: python workflow_scripts/crops.py --help."""

from lungseg.core.rule import run_rule
from lungseg.dataset.crops import run_crops

run_rule(run_crops, globals())
