"""Snakemake rule `nodules`. From the shell: python workflow_scripts/nodules.py --help."""

from lungseg.core.rule import run_rule
from lungseg.ingest.nodules import run_nodules

run_rule(run_nodules, globals())
