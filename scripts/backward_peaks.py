"""Peak RSS of each backward call of the iUNet's training step, in activations (docs/decisions.md).

One activation is one full-resolution C-channel float32 tensor. Each custom autograd function's
backward (memcnn's invertible blocks through lungseg's lean backward, the oneDNN convolutions,
the 1x1x1 heads) starts a new peak window (/proc/self/clear_refs), and its peak above the RSS
before the step is printed, largest first. Runs itself in a child with the benchmark's
allocator setting, as the benchmark does.

    python scripts/backward_peaks.py --size 128 --blocks 4 --top 12
"""

import argparse
import os
import subprocess
import sys

from lungseg.bench.allocator import FREED_MEMORY_TO_OS, child_environment

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--size", type=int, default=64)
parser.add_argument("--blocks", type=int, default=4)
parser.add_argument("--channels", type=int, default=16)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--top", type=int, default=10)
parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
args = parser.parse_args()

if not args.child:
    env = child_environment(FREED_MEMORY_TO_OS)
    sys.exit(subprocess.call([sys.executable, __file__, *sys.argv[1:], "--child"], env=env))

import torch  # noqa: E402

from lungseg.bench.step import Point, build_variant  # noqa: E402
from lungseg.nets import cpu_convolution, invertible  # noqa: E402
from lungseg.training.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(0)
n = args.size
activation = args.channels * n**3 * 4
calls: list[tuple[float, str]] = []
running: list[int] = []  # peak so far of each backward call in progress (nested ones inside)
before = 0


def traced(cls, label_of):
    original = cls.backward

    def backward(ctx, *grads):
        label = label_of(ctx)  # before the backward: memcnn's pops its saved inputs
        if running:  # a call inside another's backward: the outer one's peak so far is kept
            running[-1] = max(running[-1], peak_rss_bytes())
            label = f"  (inside) {label}"
        running.append(0)
        reset_peak_rss()
        result = original(ctx, *grads)
        peak = max(running.pop(), peak_rss_bytes())
        if running:
            running[-1] = max(running[-1], peak)
        calls.append(((peak - before) / activation, label))
        return result

    cls.backward = staticmethod(backward)


def invertible_label(ctx) -> str:
    module = getattr(ctx.fn, "__self__", None)
    shape = tuple(ctx.inputs[-1][0].shape[1:3]) if ctx.inputs else ("?", "?")
    return f"{type(module).__name__} C={shape[0]} D={shape[1]} #{len(calls)}"


traced(invertible.LeanInvertibleFunction, invertible_label)
# The wrapper's call adds two references to each gradient (its tuple, the one it passes on):
# without this ``_owned`` would see a holder and the lean backward would take its fallback
# paths. The run prints how often ``_owned`` said yes.
invertible._ENGINE_REFS += 2
owned_said: list[bool] = []
_owned = invertible._owned


def counted_owned(grad, channels=None):  # a frame more, as tests/test_models.py's spy: +1 reference
    owned_said.append(_owned(grad, channels))
    return owned_said[-1]


invertible._owned = counted_owned
invertible._ENGINE_REFS += 1
traced(cpu_convolution._StrideOneConv3d, lambda ctx: f"conv3d #{len(calls)}")
traced(cpu_convolution._PointwiseConv3d, lambda ctx: "head 1x1x1")

model = build_variant(Point("size", "iunet", (n, n, n), args.channels, 4, args.blocks))
image = torch.randn(1, 1, n, n, n)
target = (torch.rand(1, 1, n, n, n) > 0.5).float()
reset_peak_rss()
before = current_rss_bytes()
logits = model(image)[0]
forward_peak = (peak_rss_bytes() - before) / activation
torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
print(
    f"{n}^3, C = {args.channels}, 4 levels, {args.blocks} blocks; activation {activation >> 20} MiB"
)
print(f"forward peak {forward_peak:.2f}; backward calls: {len(calls)}; gradient overwritten in")
print(f"place in {sum(owned_said)} of {len(owned_said)} calls that could")
for peak, label in sorted(calls, reverse=True)[: args.top]:
    print(f"  {peak:5.2f}  {label}")
print(f"pid {os.getpid()}")
