"""Snakemake rule `download`. From the shell: python workflow_scripts/download.py --help."""

from lungseg.core.rule import run_rule
from lungseg.download.fetch import run_download

run_rule(run_download, globals())
