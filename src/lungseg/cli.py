"""The ``lungseg`` command: one subcommand per workflow job (each also runs without Snakemake).

Each subcommand is a stage function of the registry (:mod:`lungseg.stages`); its options come
from the function's signature and settings dataclasses (:mod:`lungseg.core.rule`), named as the
rule's files and the config's keys. Modules are imported lazily so ``lungseg --help`` stays fast
(torch and pylidc take seconds to import).
"""

from __future__ import annotations

import argparse
import sys

from lungseg.stages import by_command, resolve


def stage_function(command: str):
    """The stage function behind a subcommand (imports its module)."""
    return resolve(by_command()[command].function)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungseg", description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="also write the log to this file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, stage in by_command().items():
        # add_help=False: `lungseg CMD --help` must reach the full parser built below.
        sub.add_parser(name, help=stage.help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lungseg.core.rule import run_shell

    argv = list(sys.argv[1:] if argv is None else argv)
    known, _ = build_parser().parse_known_args(argv)
    rest = argv[argv.index(known.command) + 1 :]
    if known.log and "--log" not in rest:
        rest = ["--log", known.log, *rest]
    return run_shell(stage_function(known.command), rest, prog=f"lungseg {known.command}")


if __name__ == "__main__":
    sys.exit(main())
