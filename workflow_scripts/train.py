"""Snakemake rule `train` (one job per variant). Shell: python workflow_scripts/train.py -h."""

import json
import sys
from pathlib import Path

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "train",
        "--crops", smk.input.crops,
        "--crops-table", smk.input.table,
        "--split", smk.input.split,
        "--out-dir", str(Path(smk.output.metrics).parent),
        "--settings", json.dumps(dict(smk.params.settings)),
        "--threads", str(smk.threads),
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["train", *sys.argv[1:]]))
