# Helpers and input functions shared by the rules. Logic beyond file wiring lives in src/lungseg.
import functools
from pathlib import Path

SAMPLE_ROOT = "results/sample_data"


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


@functools.lru_cache(maxsize=4)
def read_series_table(path, mtime):
    """The index's series.csv, read once per version (input functions run once per job)."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False)


def index_version():
    """(path, mtime) of the index's series.csv; raises until the checkpoint has run."""
    series_csv = checkpoints.index.get().output.series
    return series_csv, Path(series_csv).stat().st_mtime


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


def cohort_criteria_args():
    """Cohort criteria from config as `lungseg cohort`/`lungseg nodules` arguments."""
    cohort = config["cohort"]
    args = [
        "--max-slice-thickness",
        str(cohort["max_slice_thickness"]),
        "--min-readers",
        str(cohort["min_readers"]),
        "--min-diameter",
        str(cohort["min_diameter_mm"]),
        "--spacing-tolerance",
        str(config["ingest"]["spacing_tolerance"]),
    ]
    if not cohort["exclude_irregular"]:
        args.append("--keep-irregular")
    return args


# --- crops and split ---
def crops_outputs():
    """Crops, their overview figure and the split (also built through training)."""
    return [
        "results/crops/crops.csv",
        "results/split/split.csv",
        "results/plots/crops_overview.png",
    ]


def crops_args():
    """config["crops"] as `lungseg crops` arguments (a null spacing is "none": native)."""
    crops = config["crops"]
    spacing = crops["target_spacing"] or [None, None, None]
    return [
        "--size",
        *[str(n) for n in crops["size"]],
        "--target-spacing",
        *["none" if s is None else str(s) for s in spacing],
        "--mask-interpolation",
        crops["mask_interpolation"],
        "--compression",
        crops["compression"],
    ]


def split_args():
    """config["split"] as `lungseg split` arguments."""
    split = config["split"]
    return [
        "--val-fraction",
        str(split["val_fraction"]),
        "--seed",
        str(split["seed"]),
        "--size-bins",
        *[str(b) for b in split["size_bins_mm"]],
        "--folds",
        str(split["folds"]),
        "--val-fold",
        str(split["val_fold"]),
    ]


# --- train ---
def model_names():
    """The model variants: keys of config["models"], the values of the {model} wildcard."""
    return list(config["models"])


def model_wildcard_pattern():
    """Regex matching exactly the configured variant names."""
    import re

    return "|".join(re.escape(name) for name in model_names())


def model_settings(wildcards):
    """A variant's merged settings: config["training"] (less resources), then its overrides.

    Null or unset keys of a variant inherit the training value. These are the train job's params,
    so editing one variant reruns only that variant's training.
    """
    shared = {k: v for k, v in config["training"].items() if k != "resources"}
    overrides = config["models"][wildcards.model] or {}
    return {**shared, **{k: v for k, v in overrides.items() if v is not None}}


def train_resource(name):
    """A train job resource (threads, mem_mb, runtime, gpu) from config["training"]["resources"]."""
    return config["training"]["resources"][name]


def train_outputs():
    """Metrics and best checkpoint of every variant."""
    return expand(
        ["results/models/{model}/metrics.csv", "results/models/{model}/best.pt"],
        model=model_names(),
    )


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
    import re

    return "|".join(re.escape(name) for name in evaluated_models())


def evaluation_device():
    """Device of the evaluate jobs: cuda when they are given a GPU, else the configured one."""
    if config["evaluation"]["resources"]["gpu"]:
        return "cuda"
    return config["evaluation"]["device"]


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
def detector_names():
    """The detectors: keys of config["detectors"], the values of the {detector} wildcard."""
    return list(config["detectors"])


def detector_wildcard_pattern():
    """Regex matching exactly the configured detector names."""
    import re

    return "|".join(re.escape(name) for name in detector_names())


def detector_settings(wildcards):
    """A detector's merged settings: config["detection"] (less volumes, resources), then its
    non-null overrides (lungseg.detection.settings.merged_detector_config does the same). These
    are the params of its jobs, so editing one detector reruns only that detector's chain."""
    excluded = ("volumes", "resources")
    shared = {k: v for k, v in config["detection"].items() if k not in excluded}
    overrides = config["detectors"][wildcards.detector] or {}
    return {**shared, **{k: v for k, v in overrides.items() if v is not None}}


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


def detector_outputs(name):
    """results/detection/{detector}/<name> of every detector, in config order."""
    return [f"results/detection/{d}/{name}" for d in detector_names()]


def detection_outputs():
    """Everything of the detection stage that `rule all` builds."""
    outputs = ["results/detection.csv", "results/plots/froc.png"]
    outputs += detector_outputs("candidates.csv") + detector_outputs("froc.csv")
    outputs += [f"results/plots/detections_{d}.png" for d in detector_names()]
    return outputs
