"""Snakemake rule `plot_froc`. Shell: python workflow_scripts/plot_froc.py -h."""

from lungseg.core.rule import run_rule
from lungseg.figures.detection import plot_froc

run_rule(plot_froc, globals())
