"""Snakemake checkpoint `index`. From the shell: python workflow_scripts/index.py --help."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "index",
        "--root", smk.params.root,
        "--series-out", smk.output.series,
        "--files-out", smk.output.files,
        "--workers", str(smk.threads),
        "--spacing-tolerance", str(smk.params.spacing_tolerance),
    ]  # fmt: skip
    if not smk.params.exclude_irregular:
        argv.append("--keep-irregular")
    sys.exit(main(argv))
sys.exit(main(["index", *sys.argv[1:]]))
