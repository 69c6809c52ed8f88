"""CPU seconds per training step, 1 thread, of benchmark variants (docs/benchmark.md, "Time").

Wall time on a shared machine says little; the CPU time of a single-threaded process does not
depend on how many other jobs share the cores. Each variant runs in a fresh process (the
benchmark's allocator setting), ``steps`` steps of which the first is a warm-up; ``rounds``
interleaves the variants so slow drifts hit all of them.

    python scripts/step_cpu_time.py --size 128 --steps 3 --rounds 2 unet unet_checkpoint iunet
"""

import argparse
import subprocess
import sys

from lungseg.bench.allocator import FREED_MEMORY_TO_OS, child_environment

CHILD = """
import sys, time, torch
from lungseg.bench.step import Point, build_variant
torch.set_num_threads(1)
variant, n, blocks, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
point = Point("size", variant, (n, n, n), 16, 4, blocks)
model = build_variant(point)
optimiser = torch.optim.Adam(model.parameters())
image = torch.randn(1, 1, n, n, n)
target = (torch.rand(1, 1, n, n, n) > 0.5).float()
seconds = []
for _ in range(steps):
    start = time.process_time()
    optimiser.zero_grad(set_to_none=True)
    logits = model(image)[0]
    torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    optimiser.step()
    seconds.append(round(time.process_time() - start, 2))
print(variant, n, blocks, seconds, flush=True)
"""

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("variants", nargs="+")
parser.add_argument("--size", type=int, default=64)
parser.add_argument("--blocks", type=int, default=4)
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--rounds", type=int, default=2)
args = parser.parse_args()
for _ in range(args.rounds):
    for variant in args.variants:
        argv = [variant, str(args.size), str(args.blocks), str(args.steps)]
        done = subprocess.run(
            [sys.executable, "-c", CHILD, *argv],
            capture_output=True,
            text=True,
            env=child_environment(FREED_MEMORY_TO_OS),
        )
        print(done.stdout.strip() or done.stderr.strip().splitlines()[-1], flush=True)
