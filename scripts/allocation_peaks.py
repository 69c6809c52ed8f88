"""Tensor allocations alive at the iUNet training step's peaks, from PyTorch's profiler.

scripts/backward_peaks.py measures resident memory per backward call; this one says *which
tensors* make a peak: the profiler records every CPU allocation with the operator stack that
made it, so the running total can be rebuilt and, at the peak of the forward pass and of each
top-level backward call, the live allocations listed with their makers. Sizes are in
activations (one full-resolution C-channel float32 tensor). An allocation counts whole from
the moment it is made: pages released early (lungseg.nets.pages) or never touched still
count, so resident peaks can be lower. The second of two steps is traced (the first warms up).

    python scripts/allocation_peaks.py --size 128 --top 6 --show 3
"""

import argparse
import bisect
import subprocess
import sys

from lungseg.bench.allocator import FREED_MEMORY_TO_OS, child_environment

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--variant", default="iunet")
parser.add_argument("--size", type=int, default=64)
parser.add_argument("--blocks", type=int, default=4)
parser.add_argument("--channels", type=int, default=16)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--top", type=int, default=8, help="backward calls listed, largest first")
parser.add_argument("--show", type=int, default=2, help="of which this many with their tensors")
parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
args = parser.parse_args()

if not args.child:
    env = child_environment(FREED_MEMORY_TO_OS)
    sys.exit(subprocess.call([sys.executable, __file__, *sys.argv[1:], "--child"], env=env))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from lungseg.bench.step import Point, build_variant  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(0)
n = args.size
activation = args.channels * n**3 * 4
model = build_variant(Point("size", args.variant, (n, n, n), args.channels, 4, args.blocks))
optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
image = torch.randn(1, 1, n, n, n)
target = (torch.rand(1, 1, n, n, n) > 0.5).float()


def step() -> None:
    optimiser.zero_grad(set_to_none=True)
    logits = model(image)[0]
    torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    optimiser.step()


step()
with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as trace:
    step()

allocations = []  # (time, bytes (+ made, - freed), address, maker stack)
windows = []  # (start, end) of each top-level backward call, in time order


def walk(node, stack: list[str]) -> None:
    fields = node.extra_fields
    if type(fields).__name__ == "_ExtraFields_Allocation":
        maker = " < ".join(reversed(stack[-6:]))
        allocations.append((node.start_time_ns, fields.alloc_size, fields.ptr, maker))
    if node.name.startswith("autograd::engine::evaluate_function") and not any(
        s.startswith("autograd::engine::evaluate_function") for s in stack
    ):
        windows.append((node.start_time_ns, node.end_time_ns, node.name.split(": ")[-1]))
    for child in node.children:
        walk(child, [*stack, node.name])


for root in trace.profiler.kineto_results.experimental_event_tree():
    walk(root, [])
allocations.sort(key=lambda a: a[0])
windows.sort()
times = [a[0] for a in allocations]
totals, running = [], 0
for allocation in allocations:
    running += allocation[1]
    totals.append(running)


def peak_in(first: int, last: int) -> int:
    """Index of the largest running total among allocations ``first`` to ``last - 1``."""
    return max(range(first, last), key=totals.__getitem__) if last > first else first


def live_at(index: int) -> list[tuple[int, str]]:
    live: dict[int, tuple[int, str]] = {}
    for _, size, address, maker in allocations[: index + 1]:
        if size > 0:
            live[address] = (size, maker)
        else:
            live.pop(address, None)
    return sorted(live.values(), reverse=True)


def show(label: str, index: int) -> None:
    print(f"{label}: {totals[index] / activation:.3f}")
    for size, maker in live_at(index)[:8]:
        if size >= activation / 100:
            print(f"    {size / activation:6.3f}  {maker[:200]}")


end_of_forward = bisect.bisect_left(times, windows[0][0]) if windows else len(allocations)
show("forward peak", peak_in(0, end_of_forward))
calls = []
for number, (start, end, name) in enumerate(windows):
    first, last = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
    if last > first:
        index = peak_in(first, last)
        calls.append((totals[index], number, name, index))
calls.sort(reverse=True)
print(f"{n}^3, C = {args.channels}, {args.blocks} blocks: {len(windows)} backward calls")
for total, number, name, _ in calls[: args.top]:
    print(f"  {total / activation:6.3f}  #{number} {name}")
for _, number, name, index in calls[: args.show]:
    show(f"#{number} {name}", index)
