"""The U-Net with activation checkpointing: what a user short of memory would pick instead.

:class:`CheckpointedUNet3D` is :class:`lungseg.nets.models.UNet3D` (same modules, parameters
and ``state_dict``, same outputs and gradients) whose forward runs in
``torch.utils.checkpoint`` segments (``use_reentrant=False``): a segment keeps only its inputs
from the forward to the backward pass and runs again, with autograd, when the backward pass
reaches it. Where the checkpoints sit (``placement``):

* ``"level"``: one segment per encoder level (pooling + conv stack) and one per decoder level
  (upsampling + concatenation + conv stack; the full-resolution one also runs the output head,
  so the last decoder features are not kept for it). Kept: the skip tensors and the decoder
  outputs, about two full-resolution activations; the backward then rebuilds a whole
  full-resolution decoder level at once (``2 * blocks_per_level + 3`` activations).
* ``"block"``: one segment per conv block (the first decoder block also concatenates, so the
  concatenation is never kept). Kept: every block's output; rebuilt: one block at a time.
* ``"nested"``: ``"level"`` segments with ``"block"`` segments inside, so that rebuilding a
  level keeps its block outputs only while that level's backward runs. Least memory of the
  three at every size measured (docs/benchmark.md), and the benchmark's ``unet_checkpoint``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lungseg.nets.models import UNet3D, check_input

PLACEMENTS = ("level", "block", "nested")


def _checkpointed(function, *args):
    return checkpoint(function, *args, use_reentrant=False)


class CheckpointedUNet3D(UNet3D):
    """:class:`UNet3D` computed in checkpointed segments (see the module docstring)."""

    def __init__(
        self,
        channels: int,
        levels: int,
        blocks_per_level: int,
        deep_supervision: bool,
        placement: str = "nested",
    ):
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown checkpoint placement {placement!r}; one of {PLACEMENTS}")
        super().__init__(channels, levels, blocks_per_level, deep_supervision)
        self.placement = placement

    def _blocks(self, stack: nn.Sequential, x: torch.Tensor, skip: torch.Tensor | None = None):
        """``stack`` on ``x`` (after ``cat(skip, x)``), one checkpoint per block unless "level"."""
        per_block = self.placement != "level"
        for index, block in enumerate(stack):
            run = block
            if index == 0 and skip is not None:

                def run(x, skip=skip, first=block):  # the concatenation inside the segment
                    return first(torch.cat([skip, x], dim=1))

            x = _checkpointed(run, x) if per_block else run(x)
        return x

    def _encode(self, level: int, x: torch.Tensor) -> torch.Tensor:
        return self._blocks(self.encoders[level], x if level == 0 else self.pool(x))

    def _decode(self, level: int, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Decoder ``level``; at full resolution the logits of the first head."""
        x = self._blocks(self.decoders[level], self.upsamplers[level](x), skip)
        return self.heads[0](x) if level == 0 else x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.levels)
        per_level = self.placement != "block"

        def run(function, *args):
            return _checkpointed(function, *args) if per_level else function(*args)

        skips = []
        for level in range(self.levels):
            x = run(self._encode, level, x)
            skips.append(x)
        features: list[torch.Tensor] = [x]  # the bottleneck is the coarsest decoder scale
        for level in range(self.levels - 2, -1, -1):
            x = run(self._decode, level, skips[level], x)
            features.insert(0, x)
        heads = enumerate(self.heads)
        return [features[0]] + [head(features[level]) for level, head in heads if level > 0]
