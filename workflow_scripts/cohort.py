"""Snakemake rule `cohort`. From the shell: python workflow_scripts/cohort.py --help."""

from lungseg.core.rule import run_rule
from lungseg.ingest.cohort import run_cohort

run_rule(run_cohort, globals())
