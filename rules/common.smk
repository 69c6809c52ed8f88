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
    return targets


# --- sample data ---
def sample_data_outputs():
    """The sample patients' folders the index must wait for; empty when lidc_root is set."""
    if not using_sample_data():
        return []
    return [f"{SAMPLE_ROOT}/LIDC-IDRI/{p}" for p in config["sample_data"]["patients"]]


# --- ingest ---
if "sample_data_outputs" not in globals():

    def sample_data_outputs():
        """Fallback until the sample-data stage defines it: no extra inputs for the index."""
        return []


@functools.lru_cache(maxsize=4)
def read_series_table(path, mtime):
    """The index's series.csv, read once per version (input functions run once per job)."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False)


def indexed_series(status=("ok", "excluded")):
    """Rows of the index (after the checkpoint ran) whose status is in `status`."""
    series_csv = checkpoints.index.get().output.series
    series = read_series_table(series_csv, Path(series_csv).stat().st_mtime)
    return series[series["status"].isin(status)]


def volume_files(wildcards=None):
    """Every converted volume (status ok or excluded): results/volumes/<patient>/<series>.h5."""
    return [
        f"results/volumes/{row.patient_id}/{row.series_uid}.h5"
        for row in indexed_series().itertuples()
    ]


def volume_nodule_tables(wildcards=None):
    """The per-volume nodule tables, one per converted series."""
    return [path[: -len(".h5")] + ".nodules.csv" for path in volume_files()]


def convert_mem_mb(wildcards):
    """Memory of one convert job from the series' slice count (measured, docs/ingestion.md)."""
    series = indexed_series()
    row = series[series["series_uid"] == wildcards.series_uid]
    n_slices = int(row["n_slices"].iloc[0]) if len(row) else 600
    return 400 + 2 * n_slices


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

# --- benchmark ---
def benchmark_mem_mb():
    """The benchmark's memory budget plus room for the parent process."""
    return int(config["benchmark"]["memory_budget_gb"] * 1024) + 1024


def benchmark_runtime_min():
    return config["benchmark"]["runtime_min"]


def benchmark_gpus():
    """One GPU when the benchmark is configured for CUDA, else none."""
    return 1 if config["benchmark"]["device"] == "cuda" else 0
