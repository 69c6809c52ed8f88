"""The torch install of scripts/install-torch.sh: which build it picks, and that the pinned set it
installs with --no-deps holds everything that build requires (issue 34).

The plans are proven from package metadata only: ``pip install --dry-run --report`` of exactly
what the script runs, no wheel downloaded. The CUDA plan is resolved on the public index with
pip's configuration ignored (``--isolated``), as on a user's machine. The CPU build comes from
the PyTorch CPU index, which this project's machines cannot reach; there pip's own configuration
(a local wheelhouse with the same wheel) serves it, and the test says which source it used.
Both need the network for metadata (~10 s); without it they skip, and in CI (CI set) they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install-torch.sh"
TORCH = "2.13.0"


def pins(lock: Path) -> dict[str, Version]:
    """name -> version of a lock file's `name==version` lines (markers for this platform)."""
    found = {}
    for line in lock.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line.replace("===", "=="))
        if requirement.marker is None or requirement.marker.evaluate():
            found[canonicalize_name(requirement.name)] = Version(str(requirement.specifier)[2:])
    return found


def run_script(choice: str, python: str, *pip_options: str, path: str | None = None):
    env = {**os.environ, "LUNGSEG_TORCH": choice}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        ["bash", str(SCRIPT), python, *pip_options],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def dry_run(tmp_path: Path, choice: str, *pip_options: str) -> list[dict]:
    report = tmp_path / f"{choice}.json"
    done = run_script(
        choice,
        sys.executable,
        *pip_options,
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        str(report),
    )
    if done.returncode != 0:
        reason = f"pip could not resolve the {choice} plan: {done.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return json.loads(report.read_text())["install"]


def unmet_requirements(plan: list[dict], locked: dict[str, Version]) -> list[str]:
    """Every requirement of every planned package (with the extras asked of it, markers for this
    platform) that neither the plan nor requirements.lock satisfies."""
    planned = {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in plan}
    available = {**locked, **{n: Version(m["version"]) for n, m in planned.items()}}
    unmet, todo, seen = [], [(n, frozenset()) for n in planned], set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name not in planned:
            continue
        seen.add((name, extras))
        for text in planned[name].get("requires_dist") or []:
            requirement = Requirement(text)
            marker = requirement.marker or Marker("python_version >= '0'")
            if not any(marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            dep = canonicalize_name(requirement.name)
            have = available.get(dep)
            if have is None or not requirement.specifier.contains(have, prereleases=True):
                unmet.append(f"{name} needs {text}; plan/lock has {have}")
            todo.append((dep, frozenset(requirement.extras)))
    return unmet


@pytest.mark.slow
def test_cuda_plan_installs_everything_the_cuda_build_needs(tmp_path):
    plan = dry_run(tmp_path, "cuda", "--isolated")
    by_name = {canonicalize_name(i["metadata"]["name"]): i for i in plan}
    torch = by_name["torch"]
    assert torch["metadata"]["version"] == TORCH  # the release, never a local +cpu build
    assert "files.pythonhosted.org" in torch["download_info"]["url"]
    assert {n for n in by_name if n.startswith("nvidia-")} >= {"nvidia-cudnn-cu13", "nvidia-cublas"}
    # --no-deps installs exactly the lock, so the lock must close the CUDA build's requirements.
    assert set(by_name) == set(pins(REPO / "requirements-torch-cuda.lock"))
    assert unmet_requirements(plan, pins(REPO / "requirements.lock")) == []


@pytest.mark.slow
def test_cpu_plan_needs_only_what_requirements_lock_pins(tmp_path):
    plan = dry_run(tmp_path, "cpu")
    assert [canonicalize_name(i["metadata"]["name"]) for i in plan] == ["torch"]
    torch = plan[0]
    version = Version(torch["metadata"]["version"])
    assert version.public == TORCH
    if sys.platform == "linux":
        assert version.local == "cpu"
    print("CPU wheel from", torch["download_info"]["url"])
    assert unmet_requirements(plan, pins(REPO / "requirements.lock")) == []


def test_unmet_requirements_sees_a_missing_package_a_wrong_pin_and_extras():
    plan = [
        {"metadata": {"name": "a", "version": "1", "requires_dist": ["b>=2", "c[x]"]}},
        {"metadata": {"name": "c", "version": "1", "requires_dist": ["d; extra == 'x'"]}},
    ]
    assert unmet_requirements(plan, {"b": Version("2")}) == [
        "c needs d; extra == 'x'; plan/lock has None"
    ]
    assert unmet_requirements(plan, {"b": Version("1"), "d": Version("1")}) == [
        "a needs b>=2; plan/lock has 1"
    ]
    assert unmet_requirements(plan, {"b": Version("3"), "d": Version("0")}) == []


def fake_tools(tmp_path: Path, gpu_lines: str | None, driver: str, offline_ok: bool):
    """A PATH with a fake nvidia-smi (or none) and a fake python that logs its pip calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if gpu_lines is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(
            f'#!/bin/bash\nif [ "$1" = -L ]; then printf "{gpu_lines}"; else echo "{driver}"; fi\n'
        )
        smi.chmod(0o755)
    log = tmp_path / "pip.log"
    python = bin_dir / "python"
    python.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {log}\n'
        f'if [[ "$*" == *--no-index* ]]; then exit {0 if offline_ok else 1}; fi\n'
    )
    python.chmod(0o755)
    return str(python), f"{bin_dir}:/usr/bin:/bin", log


CHOICES = [
    # LUNGSEG_TORCH, nvidia-smi -L output (None: no nvidia-smi), driver, wheel offline, lock, calls
    ("auto", None, "", True, "cpu", 1),
    ("auto", "GPU 0: NVIDIA H100 (UUID: x)\n", "590.48.01", True, "cuda", 1),
    ("auto", "GPU 0: NVIDIA A100 (UUID: x)\n", "550.54.15", True, "cpu", 1),
    ("auto", "No devices were found\n", "", True, "cpu", 1),
    ("cpu", "GPU 0: NVIDIA H100 (UUID: x)\n", "590.48.01", False, "cpu", 2),
    ("cuda", None, "", True, "cuda", 1),
]


@pytest.mark.parametrize(("choice", "gpus", "driver", "offline_ok", "lock", "calls"), CHOICES)
def test_the_build_is_chosen_by_lungseg_torch_and_the_gpu(
    tmp_path, choice, gpus, driver, offline_ok, lock, calls
):
    python, path, log = fake_tools(tmp_path, gpus, driver, offline_ok)
    done = run_script(choice, python, "--quiet", path=path)
    assert done.returncode == 0, done.stderr
    assert f"torch build: {lock}" in done.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == calls
    assert all(f"requirements-torch-{lock}.lock" in line and "--no-deps" in line for line in lines)
    if lock == "cpu":
        assert "--no-index" in lines[0]
        if calls == 2:  # not in pip's configuration: the PyTorch CPU index
            assert "--index-url https://download.pytorch.org/whl/cpu" in lines[1]
    if driver.startswith("550"):
        assert "older than CUDA 13 needs" in done.stderr


def test_an_unknown_choice_is_an_error_naming_the_variable(tmp_path):
    python, path, log = fake_tools(tmp_path, None, "", True)
    done = run_script("rocm", python, path=path)
    assert done.returncode == 2
    assert "LUNGSEG_TORCH=rocm: expected auto, cpu or cuda" in done.stderr
    assert not log.exists()
