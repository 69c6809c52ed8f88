"""Snakemake rule `sample_data`. From the shell: python workflow_scripts/sample_data.py --help."""

import sys
from pathlib import Path

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    out = Path(smk.output.patient).parent.parent  # OUT/LIDC-IDRI/<patient>
    argv = [
        "--log", smk.log[0], "sample-data", str(out),
        "--patients", smk.wildcards.patient,
        "--seed", str(smk.params.seed),
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["sample-data", *sys.argv[1:]]))
