"""Snakemake rule `cohort`. From the shell: python workflow_scripts/cohort.py --help."""

import sys
from pathlib import Path

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    argv = [
        "--log", smk.log[0], "cohort",
        "--out", str(Path(smk.output.scans).parent),
        "--index", smk.input.series,
        "--scope", smk.params.scope,
        *smk.params.criteria,
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["cohort", *sys.argv[1:]]))
