"""Snakemake rule `train` (one job per variant). Shell: python workflow_scripts/train.py -h."""

from lungseg.core.rule import run_rule
from lungseg.training.trainer import run_train

run_rule(run_train, globals())
