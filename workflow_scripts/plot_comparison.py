"""Snakemake rule `plot_comparison`. Shell: python workflow_scripts/plot_comparison.py -h."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "plots", "comparison",
        "--models", *smk.params.models,
        "--metrics", *smk.input.metrics,
        "--out", smk.output[0],
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["plots", "comparison", *sys.argv[1:]]))
