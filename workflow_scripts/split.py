"""Snakemake rule `split`. From the shell: python workflow_scripts/split.py --help."""

from lungseg.core.rule import run_rule
from lungseg.dataset.split import run_split

run_rule(run_split, globals())
