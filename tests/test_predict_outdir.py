"""`lungseg predict`'s output folder: unwritable ones refused before any work, the staging
folders of killed runs removed by the next run, never those of a running one.

Real parts: a sample series exported to a flat folder, small real bundles, real processes (a
`lungseg predict` killed with SIGKILL, `sleep` processes for live pids). The tests run as root,
for whom permission bits (chmod 0o555) stop nothing: the unwritable cases that hold for root too
are a path below a regular file and an immutable folder (chattr +i, where the file system has it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from predict_helpers import export_series, start_predict
from scan_helpers import tiny_bundles

from lungseg.cli import main
from lungseg.predict.outdir import CLOCK_SLACK_S, remove_stale_staging, stale_reason
from lungseg.predict.pipeline import OUTPUTS


@pytest.fixture(scope="module")
def exported(sample_lidc, tmp_path_factory) -> tuple[Path, str]:
    return export_series(sample_lidc, tmp_path_factory.mktemp("export") / "my scan")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    """Bundles that keep no detection: outputs without nodules, the quickest full run."""
    return tiny_bundles(tmp_path_factory.mktemp("bundles"), threshold=None)


def predict_here(capsys, *args) -> tuple[int, str]:
    """The command line in this process: (exit code, stderr)."""
    code = main(["predict", *map(str, args)])
    return code, capsys.readouterr().err


# --- the stale-folder rule ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("started", "changed", "stale"),
    [
        (None, 1000.0, True),  # no process with that pid: a killed run
        (990.0, 1000.0, False),  # running since before the folder was made: a live run
        (1000.0, 1000.0, False),  # folder made as the process started
        (1000.0 + CLOCK_SLACK_S / 2, 1000.0, False),  # within the clock's imprecision: kept
        (1000.0 + 60, 1000.0, True),  # started a minute after the folder: pid reused
        (float("-inf"), 1000.0, False),  # someone else's process, start unknown: kept
    ],
)
def test_stale_rule(started, changed, stale):
    assert (stale_reason(4321, changed, started) is not None) is stale


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()  # reaped: the pid names no process now
    return process.pid


def test_stale_staging_folders_of_real_processes(tmp_path, caplog):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.1)
        live, dead = sleeper.pid, _dead_pid()
        a_day_ago = time.time() - 86400
        folders = {  # name -> (mtime or None for now, expected to be removed)
            f".uid1.partial-{dead}": (None, True),  # killed run
            f".uid2.old-{dead}": (None, True),  # killed between the two renames
            f".uid3.partial-{live}": (None, False),  # a run still going
            f".uid4.partial-{live}": (a_day_ago, True),  # older than its pid's process
            f".uid5.partial-{os.getpid()}": (a_day_ago, True),  # our pid, an earlier process
            f"uid6.partial-{dead}": (None, False),  # not hidden: not a staging folder
            f".uid7.partial-x{dead}": (None, False),  # no pid
            "1.2.840.113619": (None, False),  # a result
        }
        for name, (mtime, _) in folders.items():
            (tmp_path / name).mkdir()
            (tmp_path / name / "image.nii.gz").write_bytes(b"\x1f\x8b" + bytes(2000))
            if mtime is not None:
                os.utime(tmp_path / name, (mtime, mtime))
        (tmp_path / f".uid8.partial-{dead}").write_text("a file, not a folder")
        caplog.set_level("INFO", logger="lungseg.predict.outdir")
        removed = remove_stale_staging(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    expected = sorted(name for name, (_, gone) in folders.items() if gone)
    assert sorted(r.path.name for r in removed) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [name for name, (_, gone) in folders.items() if not gone] + [f".uid8.partial-{dead}"]
    )
    assert all(r.bytes == 2002 for r in removed)
    for name in expected:  # each removal logged with its path and size
        assert any(str(tmp_path / name) in m and "MB" in m for m in caplog.messages)


def test_a_workflow_job_removes_only_its_own_series_folders(tmp_path):
    dead = _dead_pid()
    for name in (f".mine.partial-{dead}", f".other.partial-{dead}"):
        (tmp_path / name).mkdir()
    assert [r.path.name for r in remove_stale_staging(tmp_path, "mine")] == [
        f".mine.partial-{dead}"
    ]
    assert [p.name for p in tmp_path.iterdir()] == [f".other.partial-{dead}"]


# --- an unwritable --out: one line, exit 1, before any model or series is read -------------


def _below_a_file(tmp_path: Path) -> Path:
    (tmp_path / "results.txt").write_text("a file where a folder is expected")
    return tmp_path / "results.txt" / "out"  # mkdir fails with ENOTDIR, for root too


def _immutable(tmp_path: Path) -> Path:
    folder = tmp_path / "frozen"
    folder.mkdir()
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i not available here: {made.stderr.decode().strip()}")
    return folder  # EPERM on any new entry, for root too


def _read_only_bits(tmp_path: Path) -> Path:
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except PermissionError:
        return folder
    (folder / "probe").unlink()
    folder.chmod(0o755)
    pytest.skip("running as root: permission bits do not stop root from writing")


@pytest.mark.parametrize(
    "make", [_below_a_file, _immutable, _read_only_bits], ids=lambda f: f.__name__
)
def test_an_unwritable_out_stops_with_one_line_before_any_work(
    exported, bundles, tmp_path, make, capsys
):
    folder, _ = exported
    detector, segmenter = bundles
    out = make(tmp_path)
    try:
        started = time.perf_counter()
        code, err = predict_here(
            capsys, folder, "--out", out, "--detector", detector, "--segmenter", segmenter
        )
        seconds = time.perf_counter() - started
        # the same with a missing series folder and detector: --out is checked first
        code_first, err_first = predict_here(
            capsys, tmp_path / "no such scan", "--out", out, "--detector", tmp_path / "no.pt"
        )
    finally:
        subprocess.run(["chattr", "-i", str(out)], capture_output=True, check=False)
        if out.is_dir():
            out.chmod(0o755)
    assert code == 1 and code_first == 1, err
    assert "Traceback" not in err + err_first and "unexpected error" not in err
    lines = [line for line in err.splitlines() if "ERROR" in line]
    assert len(lines) == 1 and str(out) in lines[0]
    assert "not writable" in lines[0] or "cannot create the folder" in lines[0]
    assert f"{out}: " in err_first and "no such scan" not in err_first
    assert seconds < 5, f"{seconds:.1f} s: was the scan read before --out was checked?"


def test_a_missing_out_is_created_and_left_empty_when_the_input_is_bad(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    code, err = predict_here(capsys, tmp_path / "no such scan", "--out", out)
    assert code == 1 and "series folder not found" in err
    assert not out.exists()  # made for the write probe, removed again: nothing left behind


# --- a killed predict -----------------------------------------------------------------------


def _wait_for_staging(process: subprocess.Popen, out: Path, uid: str, timeout: float = 300):
    """The staging folder of ``process`` once a file is being written into it."""
    staging = out / f".{uid}.partial-{process.pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"predict ended before it could be killed:\n{process.stdout.read()}")
        try:
            if any(staging.iterdir()):
                return staging
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    pytest.fail(f"no file in {staging} after {timeout} s")


@pytest.mark.slow  # a real `lungseg predict` process, killed; then a full run (5-9 s)
def test_the_next_run_removes_a_killed_runs_staging_folder(
    exported, bundles, tmp_path, capsys, request
):
    folder, uid = exported
    detector, segmenter = bundles
    out = tmp_path / "out"
    args = (folder, "--out", out, "--detector", detector, "--segmenter", segmenter)
    process = start_predict(*args, cwd=Path(request.config.rootpath))
    try:
        staging = _wait_for_staging(process, out, uid)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    assert staging.is_dir() and any(staging.iterdir())  # the fault: left behind, partial
    assert not (out / uid).exists()

    code, err = predict_here(capsys, *args)
    assert code == 0, err[-3000:]
    assert not staging.exists()
    assert f"removed stale staging folder {staging}" in err
    assert sorted(p.name for p in out.iterdir()) == [uid]  # no other leftovers
    result = out / uid
    # no nodule kept by these bundles: everything but the DICOM-SEG (docs/predict.md)
    assert sorted(p.name for p in result.iterdir()) == sorted(set(OUTPUTS) - {"nodules.seg.dcm"})
    summary = json.loads((result / "summary.json").read_text())
    image = np.asarray(nib.load(result / "image.nii.gz").dataobj)  # the whole gzip stream
    assert image.shape == tuple(summary["shape"][::-1])
    assert [s["step"] for s in summary["steps"]][-1] == "radiomics"
