"""Snakemake rule `detection_scans`. Shell: python workflow_scripts/detection_scans.py -h."""

from lungseg.core.rule import run_rule
from lungseg.detection.scans import write_scan_table

run_rule(write_scan_table, globals())
