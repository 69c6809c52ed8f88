"""Snakemake rule `crops_overview`. Shell: python workflow_scripts/crops_overview.py --help."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "crops-overview",
        "--crops", smk.input.crops,
        "--crops-table", smk.input.table,
        "--split", smk.input.split,
        "--out", smk.output[0],
        "--max-crops", str(smk.params.max_crops),
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["crops-overview", *sys.argv[1:]]))
