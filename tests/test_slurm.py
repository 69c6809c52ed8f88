"""The workflow on a real single-node SLURM cluster started by these tests (tests/slurm_cluster.py).

Checks: the cluster runs a plain sbatch job; the SLURM executor plugin runs a trivial workflow
through profiles/slurm (GPU request included, on a fake GPU); the lungseg workflow on tiny sample
settings runs through SLURM with every job in the scheduler's records, and its outputs equal
those of a local run. The daemons are stopped by their recorded PIDs afterwards, even on failure.

Skips only when this machine cannot host a cluster (not root, no Linux, packages missing and not
installable); in CI (environment variable CI set) or with LUNGSEG_REQUIRE_SLURM=1 that is a
failure instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
import slurm_cluster
from workflow_helpers import REPO, finished_local_run, slurm_test_profile, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\S+) \(log: .*/rule_(\w+)/")
STARTED = re.compile(r"^(localrule|rule|checkpoint) (\w+):$", re.MULTILINE)


def unavailable(reason: str) -> None:
    if os.environ.get("LUNGSEG_REQUIRE_SLURM") == "1" or os.environ.get("CI"):
        pytest.fail(f"SLURM test cannot run here: {reason}")
    pytest.skip(f"SLURM test cannot run here: {reason}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if slurm_cluster.missing_tools() and os.geteuid() == 0:
        install = subprocess.run(
            ["bash", str(REPO / "scripts/install-slurm.sh")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if install.returncode != 0:
            unavailable(f"scripts/install-slurm.sh failed: {install.stderr[-500:]}")
    try:
        slurm_cluster.check_environment()
    except slurm_cluster.ClusterUnavailable as error:
        unavailable(str(error))
    workdir = tmp_path_factory.mktemp("slurm")
    try:
        context = slurm_cluster.single_node_cluster(workdir / "cluster")
        running = context.__enter__()
    except slurm_cluster.ClusterUnavailable as error:
        unavailable(str(error))
    try:
        yield running
    finally:
        context.__exit__(None, None, None)
        leftover = [
            pid
            for name in ("slurmctld.pid", "slurmd.pid")
            if (pid := read_pid(workdir / "cluster" / name)) and alive(pid)
        ]
        assert not leftover, f"daemons still running after teardown: {leftover}"
        assert not slurm_cluster.DEFAULT_CONF.is_symlink()


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_plain_sbatch_job_runs_on_the_node(cluster, tmp_path):
    out = tmp_path / "job.out"
    job_id = cluster.run(
        "sbatch", "--parsable", "--mem=50", "--output", str(out), "--wrap", "echo $SLURM_JOB_ID"
    ).strip()
    assert cluster.wait_for_job(job_id) == "COMPLETED"
    assert out.read_text().strip() == job_id


def test_trivial_workflow_through_executor_plugin_and_profile(cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            """\
            rule all:
                input: "cpu.txt", "gpu.txt"

            rule cpu:
                output: "cpu.txt"
                resources: mem_mb=100, runtime=2
                shell: "echo ${{SLURM_JOB_ID:-none}} > {output}"

            rule gpu:
                output: "gpu.txt"
                resources: mem_mb=100, runtime=2, gpu=1
                shell: "echo ${{SLURM_JOB_ID:-none}} ${{CUDA_VISIBLE_DEVICES:-unset}} > {output}"
            """
        )
    )
    profile = slurm_test_profile(tmp_path / "profile", cluster.partition)
    log = snakemake(tmp_path, "--profile", str(profile), timeout=240).stdout
    submitted = {rule: job_id for _, job_id, rule in SUBMITTED.findall(log)}
    assert set(submitted) == {"cpu", "gpu"}
    records = {r.job_id: r for r in cluster.jobs()}
    for rule, job_id in submitted.items():
        assert records[job_id].state == "COMPLETED"
        assert records[job_id].comment == f"rule_{rule}"
        assert (tmp_path / f"{rule}.txt").read_text().split()[0] == job_id
    # gpu=1 became --gpus=1, and the fake GPU (gres.conf File=/dev/null) let it run.
    assert cluster.job_field(submitted["gpu"], "TresPerJob") == "gres:gpu:1"
    assert cluster.job_field(submitted["cpu"], "TresPerJob") in (None, "(null)")


def compare_outputs(local: Path, remote: Path) -> list[str]:
    """Relative paths of the compared outputs; asserts each pair holds the same content."""
    from workflow_helpers import assert_same_output, expected_outputs

    compared = []
    for relative in expected_outputs(local):
        assert (remote / relative).exists(), f"SLURM run lacks {relative}"
        assert_same_output(local / relative, remote / relative)
        compared.append(relative)
    return compared


def test_lungseg_workflow_through_slurm_matches_local_run(cluster, tmp_path_factory, sample_lidc):
    local = finished_local_run(tmp_path_factory, sample_lidc.lidc_root)
    from workflow_helpers import copy_workflow, read_config

    remote = copy_workflow(tmp_path_factory.mktemp("slurm_run"))
    (remote / "config.yaml").write_text((local / "config.yaml").read_text())
    assert read_config(remote) == read_config(local)
    profile = slurm_test_profile(remote / "test_profile", cluster.partition)
    # The limit only ends a hung run: on a loaded CI machine the SLURM round trips of the ~36
    # jobs took over 7 minutes.
    log = snakemake(remote, "--profile", str(profile), timeout=1200).stdout

    # Every job but Snakemake's local target rules went through SLURM, and SLURM ran it.
    started = STARTED.findall(log)
    remote_rules = sorted(rule for kind, rule in started if kind != "localrule")
    submissions = SUBMITTED.findall(log)
    assert remote_rules, log[-3000:]
    assert sorted(rule for _, _, rule in submissions) == remote_rules
    records = {r.job_id: r for r in cluster.jobs()}
    for _, job_id, rule in submissions:
        assert job_id in records, f"SLURM has no record of job {job_id} ({rule})"
        assert records[job_id].state == "COMPLETED", records[job_id]
        assert records[job_id].comment.startswith(f"rule_{rule}")
    assert {"index", "convert", "train"} <= set(remote_rules)
    # The profile's set-resources gave every train job a GPU (here the fake one).
    for _, job_id, rule in submissions:
        if rule == "train":
            assert cluster.job_field(job_id, "TresPerJob") == "gres:gpu:1"

    compared = compare_outputs(local, remote)
    assert any(p.startswith("results/models/") for p in compared), compared
