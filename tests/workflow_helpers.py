"""Run the lungseg workflow with real Snakemake in a copy of the repository (never in its results/).

- ``copy_workflow(dest, config_updates)``: copies the workflow files (Snakefile, rules/,
  workflow_scripts/, envs/, profiles/, report/, config.yaml) into ``dest`` and writes
  there a config.yaml = the repository's, deep-updated with ``config_updates`` (a mapping replaces a
  mapping only at keys listed in ``REPLACED_KEYS``, e.g. ``models``: the test picks its variants).
- ``tiny_config(lidc_root=None)``: settings for a run of about a minute on one core.
- ``snakemake(workdir, *args, timeout=...)``: ``timeout -k`` + the venv's snakemake; returns the
  CompletedProcess (stdout+stderr in ``.stdout``), raising with the log tail on failure unless
  ``check=False``.
- ``dry_run_jobs(workdir, *args)``: ``{rule: count}`` of the jobs a ``snakemake -n`` would run.
- ``slurm_test_profile(dest, partition)``: profiles/slurm/config.yaml made to fit a one-node
  test cluster (partition, no account, squeue status checks after 1 s, small train job).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PATHS = (
    "Snakefile", "rules", "workflow_scripts", "envs", "profiles", "report", "config"
)  # fmt: skip
REPLACED_KEYS = ("models", "patients")
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# Two small sample scans (87 slices of 3 mm, 65 of 5 mm; 5 nodules with >= 3 readers).
TINY_PATIENTS = ["LIDC-IDRI-0078", "LIDC-IDRI-0957"]


def deep_update(base: dict, updates: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in updates.items():
        if (
            isinstance(value, dict)
            and isinstance(merged.get(key), dict)
            and key not in (REPLACED_KEYS)
        ):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def tiny_config(lidc_root: Path | None = None) -> dict:
    """Updates of config.yaml for a run of a few minutes: 2 small scans, 16^3 crops, 1 epoch,
    width 4, two models (a U-Net and an iUNet), both detectors at 8 mm for 1 epoch."""
    updates: dict = {
        "sample_data": {"patients": list(TINY_PATIENTS)},
        "ingest": {"index_workers": 1},
        # Both scans are thicker than LUNA16's 2.5 mm: admit them so the cohort has nodules.
        "cohort": {"max_slice_thickness": 5.0},
        "crops": {"size": [16, 16, 16]},
        "training": {
            "channels": 4,
            "levels": 2,
            "epochs": 1,
            "batch_size": 2,
            "resources": {"threads": 1, "mem_mb": 1500, "runtime": 10},
        },
        "models": {"unet": {"arch": "unet"}, "iunet": {"arch": "iunet"}},
        # Detection at 8 mm: canvases of 40 x 48 x 56, width 2, one short epoch per detector.
        "detection": {
            "volumes": {"spacing": [8.0, 8.0, 8.0], "shape": [40, 48, 56]},
            "channels": 2,
            "levels": 2,
            "epochs": 1,
            "patch_size": [16, 16, 16],
            "patches_per_epoch": 4,
            "bootstrap_draws": 50,
            "resources": {"threads": 1, "mem_mb": 1500, "runtime": 10},
        },
    }
    if lidc_root is not None:
        updates["lidc_root"] = str(lidc_root)
    return updates


def copy_workflow(
    dest: Path,
    config_updates: dict | None = None,
    *,
    snakefile: str | None = None,
    config_text: str | None = None,
) -> Path:
    """The one way tests copy the workflow; ``snakefile`` replaces the Snakefile (a test of some
    stages only), ``config_text`` the whole config.yaml (a test of the config file itself)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_PATHS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, dirs_exist_ok=True)
        else:
            shutil.copy2(source, dest / name)
    if snakefile is not None:
        (dest / "Snakefile").write_text(snakefile)
    if config_text is not None:
        (dest / "config.yaml").write_text(config_text)
    else:
        config = yaml.safe_load((REPO / "config.yaml").read_text())
        write_config(dest, deep_update(config, config_updates or {}))
    return dest


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def read_config(workdir: Path) -> dict:
    return yaml.safe_load((workdir / "config.yaml").read_text())


def update_config(workdir: Path, updates: dict) -> None:
    write_config(workdir, deep_update(read_config(workdir), updates))


def snakemake(
    workdir: Path, *args: str, timeout: int = 300, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Snakemake in `workdir` under `timeout -k` (a hung run is killed, never left behind)."""
    argv = ["timeout", "-k", "10", str(timeout), SNAKEMAKE, "--directory", str(workdir), *args]
    result = subprocess.run(
        argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    if check and result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-60:])
        raise AssertionError(f"snakemake {' '.join(args)} exited {result.returncode}:\n{tail}")
    return result


def dry_run_jobs(workdir: Path, *args: str) -> Counter:
    """{rule: number of jobs} that `snakemake -n` schedules (empty when nothing would run)."""
    # --quiet takes values: put the caller's options (and targets) before it
    out = snakemake(workdir, "-n", "--cores", "1", *args, "--quiet", "rules", timeout=120).stdout
    jobs: Counter = Counter()
    in_table = False
    for line in out.splitlines():
        if line.strip().startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
            if match and match.group(1) != "total":
                jobs[match.group(1)] = int(match.group(2))
            elif match is None and line.strip() and not set(line.replace(" ", "")) <= set("-"):
                in_table = False
    return jobs


def slurm_test_profile(dest: Path, partition: str) -> Path:
    """profiles/slurm fitted to a one-node test cluster; the rest of the profile is as shipped."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    resources = profile["default-resources"]
    resources["slurm_partition"] = partition
    resources.pop("slurm_account", None)
    resources["mem_mb"] = 1000
    profile["set-resources"]["train"].update({"mem_mb": 2000, "runtime": 20})
    profile["set-threads"] = {"train": 1}
    profile.update(
        {
            "jobs": 4,
            "latency-wait": 5,
            "retries": 0,
            "slurm-no-account": True,
            # No slurmdbd here: squeue sees finished jobs for MinJobAge seconds.
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 1,
            "slurm-keep-successful-logs": True,
        }
    )
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


# Columns that measure the machine, not the result: excluded when two runs are compared.
MACHINE_COLUMNS = {
    "seconds", "peak_memory_mb", "max_rss", "s", "cpu_time", "seconds_per_epoch"
}  # fmt: skip
_FINISHED_RUNS: dict[str, Path] = {}


def finished_local_run(tmp_path_factory, lidc_root: Path) -> Path:
    """A workflow copy with tiny settings on the DICOM folder `lidc_root` (the session's sample
    data) after a complete local run (`snakemake --profile profiles/default`), built once per test
    session and shared by the tests that read it. Tests that change files in it restore them."""
    if "local" not in _FINISHED_RUNS:
        workdir = copy_workflow(tmp_path_factory.mktemp("local_run"), tiny_config(lidc_root))
        snakemake(workdir, "--profile", "profiles/default", "--cores", "2", timeout=1200)
        _FINISHED_RUNS["local"] = workdir
    return _FINISHED_RUNS["local"]


def expected_outputs(workdir: Path) -> list[str]:
    """The outputs (relative paths) every finished run must have, per the architecture doc."""
    import pandas as pd

    config = read_config(workdir)
    series = pd.read_csv(workdir / "results/index/series.csv", dtype=str)
    converted = series[series["status"].isin(["ok", "excluded"])]
    outputs = ["results/index/series.csv"]
    for row in converted.itertuples():
        stem = f"results/volumes/{row.patient_id}/{row.series_uid}"
        outputs += [f"{stem}.h5", f"{stem}.nodules.csv"]
    outputs += [
        "results/nodules.csv",
        "results/cohort/scans.csv",
        "results/cohort/nodules.csv",
        "results/crops/crops.h5",
        "results/crops/crops.csv",
        "results/split/split.csv",
        "results/evaluation.csv",
    ]
    for model in config["models"]:
        outputs += [
            f"results/models/{model}/metrics.csv",
            f"results/models/{model}/evaluation.csv",
            f"results/models/{model}/predictions.h5",
            f"results/plots/dice_{model}.png",
        ]
    outputs.append("results/detection.csv")
    for detector in config["detectors"]:
        outputs += [
            f"results/detection/{detector}/candidates.csv",
            f"results/detection/{detector}/froc.csv",
            f"results/plots/detections_{detector}.png",
        ]
    outputs += ["results/plots/froc.png", "results/predictor/choice.json"]
    for folder in sorted((workdir / "results/predictions").iterdir()):
        outputs += [f"results/predictions/{folder.name}/{name}"
                    for name in ("nodules.csv", "radiomics.csv", "nodules.nii.gz")]  # fmt: skip
    outputs += [
        "results/cascade.csv",
        "results/cascade_summary.csv",
        "results/radiomics_agreement.csv",
        "results/plots/cascade.png",
        "results/plots/radiomics_agreement.png",
    ]
    return outputs


def assert_same_output(first: Path, second: Path) -> None:
    """Same content: CSV tables (less timing columns), HDF5 datasets and attributes; figures and
    other files only need to exist (their bytes hold timestamps and renderer details)."""
    import h5py
    import hdf5plugin  # noqa: F401 (registers the Blosc filters of the HDF5 outputs)
    import numpy as np
    import pandas as pd

    assert first.exists(), first
    assert second.exists(), second
    if first.suffix == ".csv":
        a, b = pd.read_csv(first), pd.read_csv(second)
        keep = [c for c in a.columns if c not in MACHINE_COLUMNS]
        pd.testing.assert_frame_equal(a[keep], b[keep], obj=str(first))
    elif first.suffix == ".h5":
        with h5py.File(first) as fa, h5py.File(second) as fb:
            names_a, names_b = [], []
            fa.visit(names_a.append)
            fb.visit(names_b.append)
            assert names_a == names_b, (first, names_a, names_b)
            for name in names_a:
                if isinstance(fa[name], h5py.Dataset):
                    np.testing.assert_array_equal(fa[name][()], fb[name][()], err_msg=name)
                assert dict(fa[name].attrs).keys() == dict(fb[name].attrs).keys()
            for key, value in fa.attrs.items():
                np.testing.assert_array_equal(value, fb.attrs[key], err_msg=f"{first}:{key}")
