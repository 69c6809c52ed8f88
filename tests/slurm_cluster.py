"""A throw-away single-node SLURM cluster for the integration tests (tests/test_slurm.py).

``single_node_cluster(workdir)`` writes a slurm.conf for this machine into ``workdir``, starts
munged (unless one already answers), slurmctld and slurmd, waits for the node to be idle and
yields a :class:`Cluster`. On exit, even after a failure, an interrupt or SIGTERM, it cancels
the cluster's jobs, stops every daemon it started by the PID it recorded, and removes the
``/etc/slurm/slurm.conf`` link it made. A link and daemons left by a session that was killed
(SIGKILL runs no ``finally``) are cleared first (``clear_stale_cluster``). Nothing here is
specific to lungseg.

Facts this relies on (Debian 12, Slurm 22.05 from apt, root, no systemd):
- node CPUs and RealMemory must be exactly what ``slurmd -C`` prints, or the node drains;
- ``select/cons_tres``, ``proctrack/linuxproc`` and ``task/none`` work without cgroups;
- the SLURM executor's job step drops every ``SLURM_*`` variable (``SLURM_CONF`` too) before its
  inner ``srun``, so the config must also be at the default path ``/etc/slurm/slurm.conf``;
- without slurmdbd there is no ``sacct``: finished jobs stay visible to ``squeue`` for
  ``MinJobAge`` seconds, which is how jobs are looked up afterwards;
- ``Gres=gpu:1`` with ``gres.conf`` ``Name=gpu File=/dev/null`` is a fake GPU, so ``--gpus=1``
  jobs schedule on a CPU-only node.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_PID_FILE = Path("/run/munge/munged.pid")
# One cluster at a time on this machine: the config link and the munge socket are global.
LOCK_FILE = Path("/tmp/lungseg-slurm-cluster.lock")
PARTITION = "lungseg"
# First line of every config written here: how a stale one is told from a real cluster's.
MARKER = "# Written by tests/slurm_cluster.py for one test session."
REQUIRED_TOOLS = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "munged")


class ClusterUnavailable(RuntimeError):
    """This environment cannot run a local SLURM cluster; the message says why."""


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    name: str
    state: str
    comment: str


@dataclass(frozen=True)
class Cluster:
    workdir: Path
    conf: Path
    partition: str
    ctld_log: Path
    slurmd_log: Path

    def env(self) -> dict[str, str]:
        """The environment for SLURM clients pointed at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, timeout: float = 30) -> str:
        result = subprocess.run(
            argv, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        return result.stdout

    def jobs(self) -> list[JobRecord]:
        """Every job slurmctld still knows (running, pending and finished within MinJobAge)."""
        out = self.run("squeue", "--noheader", "--states=all", "--format=%i|%j|%T|%k")
        records = []
        for line in out.splitlines():
            job_id, name, state, comment = line.split("|", 3)
            records.append(JobRecord(job_id.strip(), name.strip(), state.strip(), comment.strip()))
        return records

    def job_field(self, job_id: str, field: str) -> str | None:
        """One `scontrol show job` field of a known job, e.g. TresPerJob (gres:gpu:1)."""
        for item in self.run("scontrol", "show", "job", job_id).split():
            key, _, value = item.partition("=")
            if key == field:
                return value
        return None

    def wait_for_job(self, job_id: str, timeout: float = 60) -> str:
        """The final state of a job (COMPLETED, FAILED, ...) once it has left the queue."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {r.job_id: r.state for r in self.jobs()}
            if states.get(job_id) not in (None, "PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return states[job_id]
            time.sleep(0.5)
        raise TimeoutError(f"SLURM job {job_id} did not finish in {timeout} s")


def missing_tools() -> list[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool, path=search) is None]


def tool(name: str) -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    path = shutil.which(name, path=search)
    if path is None:
        raise ClusterUnavailable(f"{name} is not installed (scripts/install-slurm.sh)")
    return path


def check_environment() -> None:
    """Raise ClusterUnavailable naming the first reason this machine cannot host the cluster."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        raise ClusterUnavailable("a local SLURM cluster needs Linux")
    if os.geteuid() != 0:
        raise ClusterUnavailable("starting slurmctld/slurmd/munged needs root")
    missing = missing_tools()
    if missing:
        raise ClusterUnavailable(
            f"SLURM/munge tools missing: {', '.join(missing)} (run scripts/install-slurm.sh)"
        )


def node_line() -> str:
    """This host's node definition exactly as `slurmd -C` reports it (else the node drains)."""
    out = subprocess.run(
        [tool("slurmd"), "-C"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("NodeName="):
            return line.strip()
    raise ClusterUnavailable(f"slurmd -C printed no NodeName line: {out!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(workdir: Path, min_job_age: int) -> Path:
    node = node_line()
    host = node.split()[0].removeprefix("NodeName=")
    for sub in ("state", "spool"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    conf = workdir / "slurm.conf"
    conf.write_text(
        f"""{MARKER}
ClusterName=lungsegtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
StateSaveLocation={workdir}/state
SlurmdSpoolDir={workdir}/spool
SlurmctldPidFile={workdir}/slurmctld.pid
SlurmdPidFile={workdir}/slurmd.pid
SlurmctldLogFile={workdir}/slurmctld.log
SlurmdLogFile={workdir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to squeue (no slurmdbd, so no sacct) for this many seconds.
MinJobAge={min_job_age}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
GresTypes=gpu
{node.split(" UpTime=")[0]} NodeAddr=127.0.0.1 Gres=gpu:1 State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    # A fake GPU: lets --gpus=1 jobs schedule on a CPU-only node.
    (workdir / "gres.conf").write_text(f"NodeName={host} Name=gpu File=/dev/null\n")
    return conf


def munge_answers() -> bool:
    if not MUNGE_SOCKET.exists():
        return False
    encode = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
    if encode.returncode != 0:
        return False
    decode = subprocess.run(["unmunge"], input=encode.stdout, capture_output=True, timeout=10)
    return decode.returncode == 0


def start_munge() -> int | None:
    """Start munged as user munge unless one already answers; its PID, or None if reused."""
    if munge_answers():
        return None
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(
            ["runuser", "-u", "munge", "--", tool("mungekey"), "--create"], check=True, timeout=30
        )
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
    MUNGE_SOCKET.parent.chmod(0o755)
    subprocess.run(["runuser", "-u", "munge", "--", tool("munged")], check=True, timeout=30)
    pid = read_pid(MUNGE_PID_FILE, timeout=10)
    wait_until(munge_answers, 10, "munged did not answer")
    return pid


def read_pid(pid_file: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(pid_file.read_text().strip())
        time.sleep(0.1)
    raise RuntimeError(f"{pid_file} was not written in {timeout} s")


def wait_until(predicate, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(message)


def stop_pid(pid: int, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after `timeout` s; returns once the process is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # ProcessLookupError once it is gone
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def written_here(conf: Path) -> bool:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return conf.read_text().startswith(MARKER)
    return False


def clear_stale_cluster(link: Path = DEFAULT_CONF) -> None:
    """Remove what a killed test session left: its config link and the daemons it started.

    Only called with LOCK_FILE held, so no live session owns a cluster. A link to a missing
    file, or to a config this module wrote, is stale; a daemon is stopped only if its command
    line names that config, so a reused PID is never killed. A real config is left alone.
    """
    if not link.is_symlink():
        return
    target = link.resolve()
    if target.exists() and not written_here(target):
        return
    # The daemons were started with `-f` and the path the link holds, not necessarily resolved.
    names = {os.fsencode(target), os.fsencode(os.readlink(link))}
    for name in ("slurmd.pid", "slurmctld.pid"):
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int((target.parent / name).read_text().strip())
            if names & set(command_line(pid)):
                stop_pid(pid)
    link.unlink()


def command_line(pid: int) -> list[bytes]:
    """The arguments of a running process; [] once it is gone."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return []


def link_default_conf(conf: Path) -> None:
    """/etc/slurm/slurm.conf -> conf, refusing to replace a real cluster's config."""
    clear_stale_cluster()
    if DEFAULT_CONF.exists() or DEFAULT_CONF.is_symlink():
        raise ClusterUnavailable(f"{DEFAULT_CONF} exists: this machine has its own SLURM config")
    DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
    DEFAULT_CONF.symlink_to(conf)


def node_idle(cluster: Cluster) -> bool:
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        return cluster.run("sinfo", "--noheader", "--Node", "--format=%T").strip() == "idle"
    return False


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so `finally` blocks stop the daemons."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def single_node_cluster(workdir: Path, min_job_age: int = 3600) -> Iterator[Cluster]:
    check_environment()
    workdir.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as lock, sigterm_as_interrupt():
        fcntl.flock(lock, fcntl.LOCK_EX)
        started: list[int] = []
        linked = False
        conf = write_config(workdir, min_job_age)
        cluster = Cluster(
            workdir, conf, PARTITION, workdir / "slurmctld.log", workdir / "slurmd.log"
        )
        try:
            link_default_conf(conf)
            linked = True
            munge_pid = start_munge()
            if munge_pid is not None:
                started.append(munge_pid)
            # Both daemonise and write their pid files; -c: no state from an earlier cluster.
            subprocess.run([tool("slurmctld"), "-c", "-f", str(conf)], check=True, timeout=30)
            started.append(read_pid(workdir / "slurmctld.pid", timeout=15))
            subprocess.run([tool("slurmd"), "-f", str(conf)], check=True, timeout=30)
            started.append(read_pid(workdir / "slurmd.pid", timeout=15))
            wait_until(lambda: node_idle(cluster), 30, f"node not idle: see {workdir}")
            yield cluster
        finally:
            with contextlib.suppress(Exception):
                cluster.run("scancel", f"--partition={PARTITION}")
            for pid in reversed(started):  # slurmd, slurmctld, then munged
                stop_pid(pid)
            if linked and DEFAULT_CONF.is_symlink():
                DEFAULT_CONF.unlink()
