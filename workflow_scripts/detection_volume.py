"""Snakemake rule `detection_volume`. From the shell: python workflow_scripts/detection_volume.py --help."""

from lungseg.core.rule import run_rule
from lungseg.detection.volumes import detection_volume

run_rule(detection_volume, globals())
