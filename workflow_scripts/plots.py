"""Snakemake rule `plots` (Dice and loss curves). Shell: python workflow_scripts/plots.py -h."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "plots", "curves",
        "--model", smk.wildcards.model,
        "--metrics", smk.input.metrics,
        "--dice-out", smk.output.dice,
        "--loss-out", smk.output.loss,
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["plots", "curves", *sys.argv[1:]]))
