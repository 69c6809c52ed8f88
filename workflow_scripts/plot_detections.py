"""Snakemake rule `plot_detections`. From the shell: python workflow_scripts/plot_detections.py --help."""

from lungseg.core.rule import run_rule
from lungseg.detection.figures import plot_detections

run_rule(plot_detections, globals())
