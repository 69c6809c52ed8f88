"""Snakemake rule `evaluate_summary`. Shell: python workflow_scripts/evaluate_summary.py -h."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "evaluate", "summary",
        "--models", *smk.params.models,
        "--evaluations", *smk.input.evaluations,
        "--out", smk.output[0],
        "--size-buckets", *map(str, smk.params.size_buckets),
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["evaluate", "summary", *sys.argv[1:]]))
