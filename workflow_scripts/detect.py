"""Snakemake rule `detect`. Shell: python workflow_scripts/detect.py -h."""

from lungseg.core.rule import run_rule
from lungseg.detection.predict import detect

run_rule(detect, globals())
