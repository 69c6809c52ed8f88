"""Snakemake rule `sample_data`. From the shell: python workflow_scripts/sample_data.py --help."""

from lungseg.core.rule import run_rule
from lungseg.sample.generate import run_sample_data

run_rule(run_sample_data, globals())
