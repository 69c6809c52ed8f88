"""One-pass training memory of a detector with and without memory-efficient backpropagation.

Each variant runs in a fresh process: build the detector's network, then two training steps
(batch 1, BCE) on one whole canvas; prints the peak RSS (CPU) or CUDA max allocated of the steps,
the step's memory above what was resident before it, and bytes per voxel. docs/detection_iunet.md.

    .venv/bin/python scripts/detection_memory.py --size 88 80 96 --channels 8 --levels 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def child(settings: dict, size: list[int]) -> dict:
    import torch

    from lungseg.nets.models import build_model
    from lungseg.training.memory import current_rss_bytes, peak_memory_bytes, reset_peak_rss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(settings).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    image = torch.rand(1, 1, *size, device=device)
    target = (torch.rand(1, 1, *size, device=device) > 0.99).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        reset_peak_rss()
        before = current_rss_bytes()
    for _ in range(2):
        optimiser.zero_grad(set_to_none=True)
        loss_fn(model(image)[0], target).backward()
        optimiser.step()
    peak = peak_memory_bytes(device)
    voxels = size[0] * size[1] * size[2]
    return {
        "device": device.type,
        "peak_mb": peak / 2**20,
        "step_mb": (peak - before) / 2**20,
        "bytes_per_voxel": (peak - before) / voxels,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[88, 80, 96])
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--blocks-per-level", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.size)))
        return 0
    base = {"arch": "iunet", "channels": args.channels, "levels": args.levels}
    base["blocks_per_level"] = args.blocks_per_level
    for name, extra in (
        ("iunet (memory-efficient, lean)", {"memory_efficient": True}),
        ("iunet without memory-efficient backprop", {"memory_efficient": False}),
        ("unet (same width and levels)", {"arch": "unet"}),
    ):
        command = [sys.executable, __file__, "--size", *map(str, args.size)]
        command += ["--child", json.dumps({**base, **extra})]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{name}: "
            + ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
