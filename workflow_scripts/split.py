"""Snakemake rule `split`. From the shell: python workflow_scripts/split.py --help."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "split",
        "--nodules", smk.input.nodules,
        "--out", smk.output[0],
        *smk.params.options,
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["split", *sys.argv[1:]]))
