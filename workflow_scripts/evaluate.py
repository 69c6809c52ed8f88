"""Snakemake rule `evaluate` (one job per model). Shell: python workflow_scripts/evaluate.py -h."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "evaluate", "model",
        "--checkpoint", smk.input.checkpoint,
        "--crops", smk.input.crops,
        "--crops-table", smk.input.crops_table,
        "--split", smk.input.split,
        "--out", smk.output.evaluation,
        "--predictions", smk.output.predictions,
        "--threshold", str(smk.params.threshold),
        "--batch-size", str(smk.params.batch_size),
        "--device", smk.params.device,
        "--threads", str(smk.threads),
        "--size-buckets", *map(str, smk.params.size_buckets),
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["evaluate", "model", *sys.argv[1:]]))
