"""Snakemake rule `convert` (one job per series). Shell: python workflow_scripts/convert.py -h."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "convert",
        "--files", smk.input.files,
        "--series-uid", smk.wildcards.series_uid,
        "--out", smk.output.volume,
        "--nodules-out", smk.output.nodules,
        "--annotations", smk.input.annotations,
        "--compression", smk.params.compression,
        "--spacing-tolerance", str(smk.params.spacing_tolerance),
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["convert", *sys.argv[1:]]))
