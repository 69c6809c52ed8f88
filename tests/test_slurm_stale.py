"""What a killed SLURM test session leaves behind is cleared, and nothing else is touched.

A session killed by SIGKILL (a CI timeout, a cut-off shell) keeps its pytest directory, so its
/etc/slurm/slurm.conf link still resolves and its daemons may still run; the next session must
not mistake that for a real cluster's config. Uses a link in tmp_path, so no root is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_cluster


def sleeper(*args: str) -> subprocess.Popen:
    """A stand-in daemon whose command line holds `args` (as slurmctld's holds `-f conf`)."""
    argv = [sys.executable, "-c", "import time; time.sleep(120)", *args]
    process = subprocess.Popen(argv)
    # Popen can return before /proc shows the new command line (seen after the SLURM workflow
    # test, with a large parent): a real daemon has long been running when it is cleared.
    slurm_cluster.wait_until(
        lambda: (
            slurm_cluster.command_line(process.pid)[: len(argv)] == list(map(os.fsencode, argv))
        ),
        15,
        f"pid {process.pid} never showed its command line",
    )
    return process


def gone(process: subprocess.Popen, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return True
        time.sleep(0.1)
    return False


def make_conf(directory: Path, text: str) -> Path:
    directory.mkdir()
    conf = directory / "slurm.conf"
    conf.write_text(text)
    return conf


CASES = {
    # name: (config text or None for a missing target, daemon names the config, link removed)
    "killed session, daemons running": (slurm_cluster.MARKER + "\nClusterName=x\n", True, True),
    "killed session, pid reused by another process": (slurm_cluster.MARKER + "\n", False, True),
    "dangling link": (None, False, True),
    "real cluster's config": ("ClusterName=site\n", True, False),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_clear_stale_cluster(tmp_path, case):
    text, names_conf, removed = CASES[case]
    conf = make_conf(tmp_path / "cluster", text or "")
    daemon = sleeper(str(conf)) if names_conf else sleeper()
    try:
        (conf.parent / "slurmctld.pid").write_text(f"{daemon.pid}\n")
        if text is None:
            conf.unlink()
        link = tmp_path / "etc" / "slurm.conf"
        link.parent.mkdir()
        link.symlink_to(conf)

        slurm_cluster.clear_stale_cluster(link)

        assert link.is_symlink() is not removed
        # Only a daemon of a stale config of ours is stopped.
        stopped = removed and names_conf
        assert gone(daemon, timeout=15 if stopped else 1) is stopped, (
            f"pid {daemon.pid}: {slurm_cluster.command_line(daemon.pid)}, link to {conf}"
        )
    finally:
        daemon.kill()
        daemon.wait()


def test_a_real_file_is_never_removed(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text(slurm_cluster.MARKER + "\n")  # even one that looks like ours
    slurm_cluster.clear_stale_cluster(conf)
    assert conf.read_text() == slurm_cluster.MARKER + "\n"
