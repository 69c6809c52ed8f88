"""Snakemake rule `plot_detections`. Shell: python workflow_scripts/plot_detections.py -h."""

from lungseg.core.rule import run_rule
from lungseg.figures.detection import plot_detections

run_rule(plot_detections, globals())
