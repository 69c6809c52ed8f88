"""Snakemake rule `detection_summary`. From the shell: python workflow_scripts/detection_summary.py --help."""

from lungseg.core.rule import run_rule
from lungseg.detection.evaluate import summarise_detectors

run_rule(summarise_detectors, globals())
