"""Snakemake rule `detection_volume`. Shell: python workflow_scripts/detection_volume.py -h."""

from lungseg.core.rule import run_rule
from lungseg.detection.volumes import detection_volume

run_rule(detection_volume, globals())
