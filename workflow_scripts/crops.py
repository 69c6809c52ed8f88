"""Snakemake rule `crops`. From the shell: python workflow_scripts/crops.py --help."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "crops",
        "--nodules", smk.input.nodules,
        "--volumes-dir", smk.params.volumes_dir,
        "--out", smk.output.crops,
        "--table-out", smk.output.table,
        *smk.params.options,
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["crops", *sys.argv[1:]]))
