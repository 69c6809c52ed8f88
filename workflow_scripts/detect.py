"""Snakemake rule `detect`. From the shell: python workflow_scripts/detect.py --help."""

from lungseg.core.rule import run_rule
from lungseg.detection.predict import detect

run_rule(detect, globals())
