"""Snakemake rule `plots` (Dice and loss curves). Shell: python workflow_scripts/plots.py -h."""

from lungseg.core.rule import run_rule
from lungseg.figures.curves import run_plots

run_rule(run_plots, globals())
