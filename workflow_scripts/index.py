"""Snakemake checkpoint `index`. From the shell: python workflow_scripts/index.py --help."""

from lungseg.core.rule import run_rule
from lungseg.ingest.index import run_index

run_rule(run_index, globals())
