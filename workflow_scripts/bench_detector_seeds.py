"""Snakemake rule `bench_detector_seeds`.

Shell: python workflow_scripts/bench_detector_seeds.py -h.
"""

from lungseg.bench.detection import bench_detection
from lungseg.core.rule import run_rule

run_rule(bench_detection, globals())
