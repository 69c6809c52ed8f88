"""Snakemake rule `nodules`. From the shell: python workflow_scripts/nodules.py --help."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    criteria = smk.params.criteria
    argv = [
        "--log", smk.log[0], "nodules",
        "--series", smk.input.series,
        "--out", smk.output[0],
        *criteria,
        *smk.input.tables,
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["nodules", *sys.argv[1:]]))
