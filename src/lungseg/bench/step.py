"""One benchmark point: a training step measured in a fresh child process.

The parent (:func:`run_point`) starts ``python -c ... child_main`` with the point as JSON and
the variant's allocator setting in ``GLIBC_TUNABLES``; the child builds the model, runs the
steps under a hard memory guard (``RLIMIT_DATA`` on CPU, a memory fraction on CUDA) and prints
one JSON line: peak memory, memory before the first step, seconds per step, or why it did not
fit. A fresh process per point keeps the points from contaminating each other's peak.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from lungseg.bench.allocator import FREED_MEMORY_TO_OS, child_environment


@dataclass(frozen=True)
class Variant:
    """A network and how it is trained in the benchmark."""

    #: memory.csv's ``arch``
    arch: str
    #: ``build_model`` settings beyond channels, levels and blocks per level
    model: dict
    #: :class:`lungseg.nets.checkpointing.CheckpointedUNet3D` placement, or None
    checkpoint: str | None
    #: ``torch.autocast`` dtype of the forward pass (and loss), or None for float32
    autocast: str | None
    #: ``GLIBC_TUNABLES`` of the child, or None for glibc's default allocator
    tunables: str | None


_UNET = {"arch": "unet"}
VARIANTS: dict[str, Variant] = {
    "unet": Variant("unet", _UNET, None, None, FREED_MEMORY_TO_OS),
    "unet_checkpoint": Variant("unet", _UNET, "nested", None, FREED_MEMORY_TO_OS),
    "unet_checkpoint_level": Variant("unet", _UNET, "level", None, FREED_MEMORY_TO_OS),
    "unet_checkpoint_block": Variant("unet", _UNET, "block", None, FREED_MEMORY_TO_OS),
    "unet_bf16": Variant("unet", _UNET, None, "bfloat16", FREED_MEMORY_TO_OS),
    "unet_checkpoint_bf16": Variant("unet", _UNET, "nested", "bfloat16", FREED_MEMORY_TO_OS),
    "iunet": Variant(
        "iunet", {"arch": "iunet", "lean_memory": True}, None, None, FREED_MEMORY_TO_OS
    ),
    # iunets 0.1 / memcnn as shipped, with glibc's default allocator: the "before"
    "iunet_stock": Variant("iunet", {"arch": "iunet", "lean_memory": False}, None, None, None),
}


@dataclass(frozen=True)
class Point:
    """One measurement: a variant at one input size and depth."""

    series: str
    variant: str
    size: tuple[int, int, int]
    channels: int
    levels: int
    blocks_per_level: int

    @property
    def voxels(self) -> int:
        return math.prod(self.size)

    def model_settings(self) -> dict:
        return {
            **VARIANTS[self.variant].model,
            "channels": self.channels,
            "levels": self.levels,
            "blocks_per_level": self.blocks_per_level,
        }


def build_variant(point: Point):
    """The point's network: ``build_model``'s, checkpointed if the variant says so."""
    from lungseg.nets.checkpointing import CheckpointedUNet3D
    from lungseg.nets.cpu_convolution import use_onednn_convolutions
    from lungseg.nets.models import build_model

    placement = VARIANTS[point.variant].checkpoint
    if placement is None:
        return build_model(point.model_settings())
    model = CheckpointedUNet3D(
        point.channels, point.levels, point.blocks_per_level, False, placement=placement
    )
    use_onednn_convolutions(model)
    return model


def measure_step(point: Point, device_name: str, steps: int, threads: int) -> dict:
    """Build the model, run ``steps`` training steps, return peak memory and time per step."""
    import contextlib

    import torch

    from lungseg.training.memory import current_rss_bytes, peak_memory_bytes, reset_peak_rss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    variant = VARIANTS[point.variant]
    if variant.autocast and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return {"status": "unsupported", "note": "this CUDA device has no bfloat16"}
    model = build_variant(point).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    image = torch.randn(1, 1, *point.size, device=device)
    target = (torch.rand(1, 1, *point.size, device=device) > 0.5).float()
    if variant.autocast:
        dtype = getattr(torch, variant.autocast)
        autocast = torch.autocast(device.type, dtype=dtype)
    else:
        autocast = contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        reset_peak_rss()  # as CUDA's reset above: the peak of the steps, not of the imports
        before = current_rss_bytes()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        with autocast:
            logits = model(image)[0]
            loss = loss_fn(logits, target)
        loss.backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
        computed_in = str(logits.dtype).removeprefix("torch.")
        del loss, logits
    peak = peak_memory_bytes(device)
    # The first step also allocates optimiser state and warms caches: time the others.
    timed = seconds[1:] if len(seconds) > 1 else seconds
    return {
        "peak_bytes": peak,
        "step_bytes": peak - before,
        "seconds": statistics.median(timed),
        "note": "" if computed_in == "float32" else f"logits in {computed_in}",
    }


def guard_cpu_memory(budget_bytes: int) -> None:
    """Cap this process's data segment so that its RSS cannot grow past ``budget_bytes``."""
    from lungseg.training.memory import current_rss_bytes

    with open("/proc/self/status") as status:
        data_kib = next(int(line.split()[1]) for line in status if line.startswith("VmData:"))
    headroom = max(budget_bytes - current_rss_bytes(), 0)
    limit = data_kib * 1024 + headroom
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def child_main(argv: list[str] | None = None) -> int:
    """Entry point of the measuring subprocess: JSON request in argv, JSON result on stdout."""
    request = json.loads((argv or sys.argv[1:])[0])
    point = Point(**{**request["point"], "size": tuple(request["point"]["size"])})
    import torch

    try:
        if request["device"] == "cuda":
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(request["budget_bytes"] / total, 1.0))
        else:
            import iunets  # noqa: F401  (import before the guard: library mappings are not data)

            guard_cpu_memory(request["budget_bytes"])
        result = {"status": "ok", **measure_step(point, **request["step"])}
    except (MemoryError, torch.OutOfMemoryError) as error:
        result = {"status": "did_not_fit", "note": f"out of memory under the guard: {error}"[:200]}
    except RuntimeError as error:
        if "alloc" not in str(error).lower() and "memory" not in str(error).lower():
            raise
        result = {"status": "did_not_fit", "note": f"out of memory under the guard: {error}"[:200]}
    print(json.dumps(result))
    return 0


def run_point(
    point: Point, device: str, budget_bytes: int, steps: int, threads: int, timeout_s: float
) -> dict:
    """Measure ``point`` in a fresh Python process with the variant's allocator."""
    request = {
        "point": asdict(point),
        "device": device,
        "budget_bytes": budget_bytes,
        "step": {"device_name": device, "steps": steps, "threads": threads},
    }
    command = [
        sys.executable,
        "-c",
        "import sys; from lungseg.bench.step import child_main; sys.exit(child_main())",
        json.dumps(request),
    ]
    env = child_environment(VARIANTS[point.variant].tunables)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "note": f"no result within {timeout_s:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        if done.returncode < 0:  # killed by a signal, e.g. the kernel's OOM killer
            return {"status": "did_not_fit", "note": f"killed by signal {-done.returncode}"}
        return {"status": "failed", "note": tail[0][:200]}
    return json.loads(lines[-1])
