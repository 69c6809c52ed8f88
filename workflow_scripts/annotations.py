"""Snakemake rule `annotations`. From the shell: python workflow_scripts/annotations.py --help."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "annotations",
        "--series", smk.input.series,
        "--out", smk.output.annotations,
        "--consensus-level", str(smk.params.consensus_level),
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["annotations", *sys.argv[1:]]))
