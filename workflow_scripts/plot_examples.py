"""Snakemake rule `plot_examples`. Shell: python workflow_scripts/plot_examples.py -h."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "plots", "examples",
        "--model", smk.wildcards.model,
        "--predictions", smk.input.predictions,
        "--crops", smk.input.crops,
        "--crops-table", smk.input.crops_table,
        "--evaluation", smk.input.evaluation,
        "--count", str(smk.params.examples),
        "--out", smk.output[0],
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["plots", "examples", *sys.argv[1:]]))
