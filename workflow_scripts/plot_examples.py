"""Snakemake rule `plot_examples`. Shell: python workflow_scripts/plot_examples.py -h."""

from lungseg.core.rule import run_rule
from lungseg.figures.curves import run_plot_examples

run_rule(run_plot_examples, globals())
