"""Snakemake rule `convert` (one job per series). Shell: python workflow_scripts/convert.py -h."""

from lungseg.core.rule import run_rule
from lungseg.ingest.convert import run_convert

run_rule(run_convert, globals())
