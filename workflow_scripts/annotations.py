"""Snakemake rule `annotations`. From the shell: python workflow_scripts/annotations.py --help."""

from lungseg.core.rule import run_rule
from lungseg.ingest.convert import run_annotations

run_rule(run_annotations, globals())
