"""Milliseconds a slice of one 3-D convolution at 512 x 512 x depth (docs/decisions_memory_2.md,
"Time at whole-CT sizes"): forward, input gradient and weight gradient through lungseg's path
(depth slabs where oneDNN would fall back to its reference reorders) and as one whole oneDNN
call, and a 1x1x1 head (C -> 1) as PyTorch's conv3d and as lungseg's matrix product.

    python scripts/conv_slice_time.py 8,255 8,256 16,128 16,256
"""

import argparse
import time

import torch

from lungseg.nets import cpu_convolution


def timed(depth: int, function, *args):
    """``function(*args)`` and its milliseconds a slice."""
    start = time.perf_counter()
    result = function(*args)
    return result, 1000 * (time.perf_counter() - start) / depth


def measure(channels: int, depth: int) -> dict[str, float]:
    x = torch.randn(1, channels, depth, 512, 512)
    w = torch.randn(channels, channels, 3, 3, 3)
    flipped = w.flip(2, 3, 4).transpose(0, 1)
    pad = (1, 1, 1)
    cpu_convolution._whole(x[:, :, :8], w, None, pad)  # primitive creation, not timed
    row = {}
    for name, convolve in (("lungseg", cpu_convolution._onednn), ("whole", cpu_convolution._whole)):
        y, row[f"{name} fwd"] = timed(depth, convolve, x, w, None, pad)
        _, row[f"{name} dgrad"] = timed(depth, convolve, y, flipped, None, pad)
        if name == "lungseg":
            _, row["lungseg wgrad"] = timed(
                depth, cpu_convolution._weight_grad, x, y, pad, w.shape[2:]
            )
        del y
    head = torch.randn(1, channels, 1, 1, 1)
    _, row["head conv3d"] = timed(depth, torch.nn.functional.conv3d, x, head)
    _, row["head matmul"] = timed(depth, cpu_convolution._PointwiseConv3d.apply, x, head, None)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="+", help="channels,depth")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for shape in args.shapes:
        channels, depth = map(int, shape.split(","))
        cells = ", ".join(f"{key} {ms:.1f}" for key, ms in measure(channels, depth).items())
        print(f"{channels} channels, {depth} slices (ms a slice): {cells}", flush=True)


if __name__ == "__main__":
    main()
