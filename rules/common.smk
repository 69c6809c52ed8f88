# Helpers and input functions shared by the rules. Logic beyond file wiring lives in src/lungseg.
import functools
import re
from pathlib import Path

from lungseg.bench.settings import BenchmarkSettings
from lungseg.detection.settings import VolumeSettings, merged_detector_config
from lungseg.download.settings import DownloadSettings
from lungseg.figures.settings import ExamplesSettings
from lungseg.predict.settings import PredictorSettings, PredictSettings
from lungseg.sample.settings import SampleSettings
from lungseg.stages import code_hash
from lungseg.training.settings import variant_config
from lungseg.evaluation.settings import (
    BucketSettings,
    CrossValidationSettings,
    EvaluationSettings,
)
from lungseg.dataset.settings import CropSettings, CropsOverviewSettings, SplitSettings
from lungseg.ingest.settings import (
    AnnotationSettings,
    CohortCriteria,
    CohortSettings,
    ConvertSettings,
    IndexSettings,
)

SAMPLE_ROOT = "results/sample_data"


def stage_code(rule):
    """A rule's `code` param: the hash of every lungseg module its stage function (registered
    under the rule's name in lungseg.stages) runs; an edit there reruns the rule
    (tests/test_reruns.py)."""
    return code_hash(rule)


def settings_of(cls):
    """The config keys a job's settings class reads, as its rule's params (reruns track them)."""
    return cls.config_subset(config)


def using_sample_data():
    """True when no LIDC-IDRI download is configured: the workflow generates sample data."""
    return not config["lidc_root"]


def raw_root():
    """The folder the index walks: the user's LIDC-IDRI download or the sample data."""
    return config["lidc_root"] or f"{SAMPLE_ROOT}/LIDC-IDRI"


def final_targets():
    """Everything `rule all` builds."""
    targets = []
    targets += sample_data_outputs()
    targets += ["results/nodules.csv", "results/cohort/scans.csv"]
    targets += ["results/evaluation.csv", *plot_outputs()]
    targets += crops_outputs()
    targets += detection_outputs()
    targets += prediction_outputs()
    targets += cv_outputs()
    return targets


# --- sample data ---
def sample_data_outputs():
    """The sample patients' folders the index must wait for; empty when lidc_root is set."""
    if not using_sample_data():
        return []
    return [f"{SAMPLE_ROOT}/LIDC-IDRI/{p}" for p in config["sample_data"]["patients"]]


# --- ingest ---
def index_root(wildcards):
    """The folder the index walks (a function: with sample data it is its inputs' parent)."""
    return raw_root()


def manifest_patients():
    """Whose series the index's manifest check expects: the sample's patients, else those of
    `download.patients` (empty: every patient of LIDC-IDRI)."""
    if using_sample_data():
        return list(config["sample_data"]["patients"])
    return list(config["download"]["patients"])


@functools.lru_cache(maxsize=4)
def read_series_table(path, mtime):
    """The index's series.csv, read once per version (input functions run once per job)."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False)


@functools.lru_cache(maxsize=4)
def read_files_table(path, mtime):
    """The index's files.csv as {series_uid: [paths]}, read once per version: each convert job
    reading the whole list itself would cost N^2 over N scans (0.4 s a job at 1018 scans).
    """
    import pandas as pd

    files = pd.read_csv(path, dtype=str, keep_default_na=False)
    return files.groupby("series_uid", sort=False)["path"].apply(list).to_dict()


def series_files_of(wildcards):
    """The files of a convert job's series (files.csv's rows of that series, in order)."""
    return read_files_table(*index_version("files")).get(wildcards.series_uid, [])


def index_version(output="series"):
    """(path, mtime) of an output of the index (series.csv); raises until the checkpoint has
    run."""
    path = checkpoints.index.get().output[output]
    return path, Path(path).stat().st_mtime


def volume_files(wildcards=None):
    """Every converted volume (status ok or excluded): results/volumes/<patient>/<series>.h5."""
    series = read_series_table(*index_version())
    series = series[series["status"].isin(("ok", "excluded"))]
    return [
        f"results/volumes/{patient}/{uid}.h5"
        for patient, uid in zip(series["patient_id"], series["series_uid"])
    ]


def volume_nodule_tables(wildcards=None):
    """The per-volume nodule tables, one per converted series."""
    return [path[: -len(".h5")] + ".nodules.csv" for path in volume_files()]


def volume_status_files(wildcards=None):
    """The convert jobs' status files (converted or failed, and why), one per converted series."""
    return [path[: -len(".h5")] + ".status.csv" for path in volume_files()]


def series_uid_of(wildcards):
    """The {series_uid} wildcard of a convert job (its stage function's argument)."""
    return wildcards.series_uid


def patient_id_of(wildcards):
    """The {patient_id} wildcard of a convert job (its stage function's argument)."""
    return wildcards.patient_id


# --- crops and split ---
def crops_outputs():
    """Crops, their overview figure and the split (also built through training)."""
    return [
        "results/crops/crops.csv",
        "results/split/split.csv",
        "results/plots/crops_overview.png",
    ]


# --- train ---
def model_names():
    """The model variants: keys of config["models"], the values of the {model} wildcard."""
    return list(config["models"])


def model_wildcard_pattern():
    """Regex matching exactly the configured variant names."""
    return "|".join(re.escape(name) for name in model_names())


def model_of(wildcards):
    """The {model} wildcard (titles of a model's figures)."""
    return wildcards.model


def model_settings(wildcards):
    """A variant's merged settings (training, then its overrides): the train job's params."""
    return variant_config(config, wildcards.model)


def train_resource(name):
    """A train job resource (threads, mem_mb, runtime, gpu) from config["training"]["resources"]."""
    return config["training"]["resources"][name]


def train_outputs():
    """Metrics and best checkpoint of every variant."""
    return expand(
        ["results/models/{model}/metrics.csv", "results/models/{model}/best.pt"],
        model=model_names(),
    )


# --- cross-validation (split.folds >= 2) ---
def cv_fold_list():
    """The folds of the cross-validation; none with split.folds < 2 (a single split)."""
    folds = config["split"]["folds"]
    return list(range(folds)) if folds >= 2 else []


def fold_of(wildcards):
    """The {fold} wildcard as a number (the fold_split job's argument)."""
    return int(wildcards.fold)


def cv_files(name):
    """results/models/{model}/fold_{k}/<name> of every model and fold, models first."""
    return [
        f"results/models/{m}/fold_{k}/{name}"
        for m in model_names()
        for k in cv_fold_list()
    ]


def cv_models():
    """The model of each entry of cv_files (cv_summary's parallel list)."""
    return [m for m in model_names() for _ in cv_fold_list()]


def cv_fold_numbers():
    """The fold of each entry of cv_files (cv_summary's parallel list)."""
    return [k for _ in model_names() for k in cv_fold_list()]


def cv_outputs():
    """What `rule all` builds of the cross-validation (nothing with a single split)."""
    if not cv_fold_list():
        return []
    return [
        "results/cv/nodules.csv",
        "results/cv/comparison.csv",
        "results/plots/cv_curves.png",
        "results/plots/cv_comparison.png",
    ]


# --- benchmark ---
def benchmark_mem_mb():
    """The benchmark's memory budget plus room for the parent process."""
    return int(config["benchmark"]["memory_budget_gb"] * 1024) + 1024


def benchmark_runtime_min():
    return config["benchmark"]["runtime_min"]


def benchmark_gpus():
    """One GPU when the benchmark is configured for CUDA, else none."""
    return 1 if config["benchmark"]["device"] == "cuda" else 0


# --- evaluation and plots ---
def evaluated_models():
    """Names of the model variants (config `models`), in config order."""
    return list(config["models"])


def evaluation_model_pattern():
    """Wildcard pattern matching exactly the configured model names."""
    return "|".join(re.escape(name) for name in evaluated_models())


def evaluation_settings():
    """Settings of the evaluate jobs; the device is cuda when they are given a GPU."""
    settings = settings_of(EvaluationSettings)
    if config["evaluation"]["resources"]["gpu"]:
        settings["device"] = "cuda"
    return settings


def evaluation_tables():
    """Every model's per-nodule evaluation.csv."""
    return [f"results/models/{m}/evaluation.csv" for m in evaluated_models()]


def model_metrics_tables():
    """Every model's per-epoch metrics.csv (rule train)."""
    return [f"results/models/{m}/metrics.csv" for m in evaluated_models()]


def plot_outputs():
    """All figures of rules plots, plot_examples and plot_comparison."""
    figures = ["results/plots/dice_comparison.png"]
    for model in evaluated_models():
        figures += [
            f"results/plots/{kind}_{model}.png" for kind in ("dice", "loss", "examples")
        ]
    return figures


# --- detection ---
def detector_names(modes=None):
    """The detectors (of ``modes``, if given): keys of config["detectors"], the values of the
    {detector} wildcard."""
    return [
        name
        for name in config["detectors"]
        if modes is None or merged_detector_config(config, name)["mode"] in modes
    ]


def detector_wildcard_pattern(modes=None):
    """Regex matching exactly the configured detector names (of ``modes``, if given)."""
    return "|".join(re.escape(name) for name in detector_names(modes)) or "(?!)"


def stage1_output(name, root="results/detection"):
    """<root>/<stage1>/<name> of a second stage ({detector} of mode rescore)."""
    stage1 = lambda w: merged_detector_config(config, w.detector)["stage1"]
    return lambda wildcards: f"{root}/{stage1(wildcards)}/{name}"


def detector_settings(wildcards):
    """A detector's merged settings: config["detection"] (less volumes, resources), then its
    non-null overrides. These are the params of its jobs, so editing one detector reruns only
    that detector's chain."""
    return merged_detector_config(config, wildcards.detector)


def detection_resource(name):
    """A train_detector job resource (threads, mem_mb, runtime, gpu) of config["detection"]."""
    return config["detection"]["resources"][name]


def detection_volume_files(wildcards=None):
    """One detection volume per series of index status ok."""
    series = read_series_table(*index_version())
    series = series[series["status"] == "ok"]
    return [
        f"results/detection_volumes/{patient}/{uid}.h5"
        for patient, uid in zip(series["patient_id"], series["series_uid"])
    ]


def bench_seeds():
    """The seeds of target bench_detection (detection_bench.seeds)."""
    return [int(seed) for seed in config["detection_bench"]["seeds"]]


def detector_outputs(name):
    """results/detection/{detector}/<name> of every detector, in config order."""
    return [f"results/detection/{d}/{name}" for d in detector_names()]


def detection_outputs():
    """Everything of the detection stage that `rule all` builds."""
    outputs = ["results/detection.csv", "results/plots/froc.png"]
    outputs += detector_outputs("candidates.csv") + detector_outputs("froc.csv")
    outputs += [f"results/plots/detections_{d}.png" for d in detector_names()]
    return outputs


# --- prediction ---
def predict_resource(name):
    """A predict job resource (threads, mem_mb, runtime, gpu) of config["predict"]."""
    return config["predict"]["resources"][name]


def predicted_series(wildcards=None):
    """Series uids of the predict jobs: the validation patients' series of index status ok
    whose conversion succeeded (a failed one costs that series only; see conversion.csv).
    """
    import pandas as pd

    placed = pd.read_csv(checkpoints.split.get().output.patients, dtype=str)
    patients = set(placed.loc[placed["subset"] == "val", "patient_id"])
    series = read_series_table(*index_version())
    series = series[(series["status"] == "ok") & series["patient_id"].isin(patients)]
    conversion = pd.read_csv(
        "results/index/conversion.csv", dtype=str, keep_default_na=False
    )
    failed = set(conversion.loc[conversion["conversion"] == "failed", "series_uid"])
    return sorted(uid for uid in series["series_uid"] if uid not in failed)


def prediction_folders(wildcards=None):
    """results/predictions/<series_uid>/ of every predicted validation series."""
    return [f"results/predictions/{uid}" for uid in predicted_series()]


def predicted_volumes(wildcards=None):
    """The HDF5 volumes (reference masks) of the predicted series."""
    series = read_series_table(*index_version())
    patient_of = dict(zip(series["series_uid"], series["patient_id"]))
    return [f"results/volumes/{patient_of[uid]}/{uid}.h5" for uid in predicted_series()]


def prediction_outputs():
    """Everything of the prediction stage that `rule all` builds."""
    return [
        "results/cascade.csv",
        "results/cascade_summary.csv",
        "results/radiomics_agreement.csv",
        "results/plots/cascade.png",
        "results/plots/radiomics_agreement.png",
    ]
