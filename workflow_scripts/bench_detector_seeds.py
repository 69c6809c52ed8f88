"""Snakemake rule `bench_detector_seeds`.

Shell: python workflow_scripts/bench_detector_seeds.py -h.
"""

from lungseg.core.rule import run_rule
from lungseg.detection.bench import bench_detection

run_rule(bench_detection, globals())
