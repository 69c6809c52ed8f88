"""Snakemake rule `benchmark`. From the shell: python workflow_scripts/benchmark.py --help."""

import sys

from lungseg.cli import main

if "snakemake" in globals():
    smk = snakemake  # noqa: F821 (injected by Snakemake)
    s = smk.params.settings
    argv = [
        "--log", smk.log[0], "benchmark",
        "--output", smk.output.table, "--fit", smk.output.fit, "--plot", smk.output.plot,
        "--variants", *s["variants"],
        *[arg for size in s["sizes"] for arg in ("--size", *map(str, size))],
        "--depth-size", *map(str, s["depth_size"]),
        "--depth-blocks", *map(str, s["depth_blocks"]),
        "--channels", str(s["channels"]), "--levels", str(s["levels"]),
        "--blocks-per-level", str(s["blocks_per_level"]),
        "--memory-budget-gb", str(s["memory_budget_gb"]),
        "--fit-budgets-gb", *map(str, s["fit_budgets_gb"]),
        "--device", s["device"], "--steps", str(s["steps"]), "--threads", str(smk.threads),
        "--point-timeout-s", str(s["point_timeout_s"]),
    ]  # fmt: skip
    sys.exit(main(argv))
sys.exit(main(["benchmark", *sys.argv[1:]]))
