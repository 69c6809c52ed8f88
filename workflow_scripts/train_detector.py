"""Snakemake rule `train_detector`. Shell: python workflow_scripts/train_detector.py -h."""

from lungseg.core.rule import run_rule
from lungseg.detection.train import train_detector

run_rule(train_detector, globals())
