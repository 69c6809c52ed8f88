"""Snakemake rule `plot_comparison`. Shell: python workflow_scripts/plot_comparison.py -h."""

from lungseg.core.rule import run_rule
from lungseg.figures.curves import run_plot_comparison

run_rule(run_plot_comparison, globals())
