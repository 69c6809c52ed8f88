"""Snakemake rule `plot_froc`. From the shell: python workflow_scripts/plot_froc.py --help."""

from lungseg.core.rule import run_rule
from lungseg.detection.figures import plot_froc

run_rule(plot_froc, globals())
