"""Snakemake rule `detection_summary`. Shell: python workflow_scripts/detection_summary.py -h."""

from lungseg.core.rule import run_rule
from lungseg.evaluation.detection import summarise_detectors

run_rule(summarise_detectors, globals())
