"""The iUNet layers' lean forwards and the backward passes that need no ownership check, for
lungseg.nets.invertible: couplings that write ``y`` over ``x``, channel mixing and the inverse
of up- and downsampling by depth slabs, resampling differentiated by hand."""

from __future__ import annotations

import torch
from iunets.layers import (
    InvertibleChannelMixing3D,
    InvertibleDownsampling3D,
    InvertibleUpsampling3D,
    StandardAdditiveCoupling,
)
from torch.nn import functional as F

from lungseg.nets.coupling_block import add_block, standard_layers
from lungseg.nets.cpu_convolution import depth_slabs


class LeanAdditiveCoupling(StandardAdditiveCoupling):
    """iunets' additive coupling whose forward, under memcnn (no autograd), writes ``y`` over
    ``x``.

    Stock: contiguous copies of both input halves, ``x1 + F(x2)`` as its own tensor, then the
    concatenation (about 4.5 full-resolution activations alive at its peak at level 0, input
    included). Here, with equal halves: ``x1 += F(x2)`` by slabs (F's norm applied straight into
    the sum), then the halves swapped slab by slab, so ``y = (x2, x1 + F(x2))`` lives in ``x``'s
    storage, which memcnn would free (:class:`LeanInvertibleFunction` hands it over instead).
    Otherwise ``y`` is one new tensor. Same values (tested).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = self.channel_split_pos
        inverse_split = x.shape[1] - split  # channels of y1 = x2
        lean = standard_layers(self.F) is not None and not torch.is_grad_enabled()
        if lean and split == inverse_split and x.is_contiguous() and not x.requires_grad:
            add_block(self.F, x[:, split:], x[:, :split], alpha=1.0)
            _swap_halves(x)
            return x
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        out[:, :inverse_split].copy_(x[:, split:])
        if lean:
            out[:, inverse_split:].copy_(x[:, :split])
            add_block(self.F, x[:, split:], out[:, inverse_split:], alpha=1.0)
            return out
        f = self.F(x[:, split:])
        torch.add(x[:, :split], f, out=out[:, inverse_split:])
        return out


class LeanChannelMixing(InvertibleChannelMixing3D):
    """iunets' orthogonal channel mixing whose forward writes ``W x`` a depth slab at a time.

    Stock: ``conv3d`` with the 1x1x1 kernel, which oneDNN computes into a blocked-layout
    tensor and converts into a second one: with its input, three activations alive at once
    (the iUNet forward pass's peak at level 0). Here: the output and one slab's product (2 1/8).
    Same values (tested).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dim() != 5:
            return super().forward(x)
        matrix = self.kernel_matrix
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        for sample, into in zip(x, out, strict=True):
            for start, stop in depth_slabs(x.shape[2]):
                part = sample[:, start:stop]
                product = torch.matmul(matrix, part.reshape(part.shape[0], -1))
                into[:, start:stop].copy_(product.view(part.shape))
        return out


def _rebuild_input_in_place(coupling: StandardAdditiveCoupling, y: torch.Tensor) -> torch.Tensor:
    """``x`` from ``y`` in ``y``'s own storage: ``y2 -= F(y1)``, then the halves swapped."""
    split = coupling.channel_split_pos
    inverse_split = y.shape[1] - split  # channels of y1 = x2
    y2 = y[:, inverse_split:]
    if standard_layers(coupling.F) is not None:
        add_block(coupling.F, y[:, :inverse_split], y2, alpha=-1.0)  # now x1
    else:
        y2.sub_(coupling.F(y[:, :inverse_split]))
    if split == inverse_split and y.is_contiguous():
        _swap_halves(y)  # y = (x2, x1) -> (x1, x2) in its own storage
        return y
    return torch.cat([y2, y[:, :inverse_split]], dim=1)


def _swap_halves(t: torch.Tensor) -> None:
    """``(a, b) -> (b, a)`` along the channels of ``t`` (two equal halves), in place, a depth
    slab at a time: a slab's copy is the only scratch."""
    half = t.shape[1] // 2
    for start, stop in depth_slabs(t.shape[2]):
        first = t[:, :half, start:stop].clone()
        t[:, :half, start:stop].copy_(t[:, half:, start:stop])
        t[:, half:, start:stop].copy_(first)


def _mix_in_place(matrix: torch.Tensor, t: torch.Tensor) -> None:
    """``t = matrix t`` per voxel (a C x C channel mixing), in ``t``'s own storage.

    Each voxel's channels mix alone, so a depth slab at a time can be overwritten: the working
    set is one slab's product, not a second whole tensor."""
    for sample in t:
        for start, stop in depth_slabs(t.shape[2]):
            part = sample[:, start:stop]  # (C, rows, ...): a strided (C, voxels) matrix
            part.copy_(torch.matmul(matrix, part.flatten(1)).view(part.shape))


def resampling_backward(
    layer: InvertibleDownsampling3D | InvertibleUpsampling3D,
    x: torch.Tensor,
    y: torch.Tensor,
    grad_y: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor | None, ...]:
    """iunets' orthogonal up- or downsampling (a strided, grouped convolution with the kernel
    ``K`` or its transpose), differentiated by hand.

    The layer is linear and its ``inverse`` is the transposed operation: ``x = inverse(y)``
    and ``dx = J^T g = inverse(g)``; ``dK`` is the convolution's weight gradient alone, which
    autograd takes back to the Cayley parameters. ``y`` is freed once ``x`` is rebuilt.
    memcnn's generic path recomputes ``y`` with autograd and keeps it alive with its input
    gradient (at level 0 the step's peak, docs/decisions.md).
    """
    transposed = isinstance(layer, InvertibleUpsampling3D)
    with torch.no_grad():
        kernel = layer.kernel
        x.set_(_inverse_by_slabs(layer, kernel, y))
        if y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            y.untyped_storage().resize_(0)
        _, grad_kernel, _ = torch.ops.aten.convolution_backward(
            grad_y,
            x,
            kernel,
            None,
            list(layer.stride),
            [0] * len(layer.stride),
            [1] * len(layer.stride),
            transposed,
            [0] * len(layer.stride),
            layer.low_channel_number,
            [False, True, False],
        )
        grad_x = _inverse_by_slabs(layer, kernel, grad_y)
    with torch.enable_grad():
        kernel = layer.kernel
    grads = torch.autograd.grad(kernel, weights, grad_kernel, allow_unused=True)
    return (grad_x, *grads)


def _inverse_by_slabs(
    layer: InvertibleDownsampling3D | InvertibleUpsampling3D, kernel: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """``layer.inverse(t)`` written a depth slab at a time into its result.

    The kernel is as large as the stride, so each block of ``stride`` rows on the fine side
    maps to one row on the coarse side and slabs need no halo. A whole-volume call converts
    its tensors to oneDNN's blocked layout, which pads a level-0 split's 4 channels to 16."""
    step, groups = layer.stride[0], layer.low_channel_number
    upsampling = isinstance(layer, InvertibleUpsampling3D)  # its inverse goes fine -> coarse
    coarse_depth = t.shape[2] // step if upsampling else t.shape[2]
    out = None
    for start, stop in depth_slabs(coarse_depth):
        if upsampling:
            part = F.conv3d(
                t[:, :, start * step : stop * step], kernel, stride=layer.stride, groups=groups
            )
            rows = slice(start, stop)
        else:
            part = F.conv_transpose3d(
                t[:, :, start:stop], kernel, stride=layer.stride, groups=groups
            )
            rows = slice(start * step, stop * step)
        if out is None:
            depth = coarse_depth if upsampling else coarse_depth * step
            out = part.new_empty((*part.shape[:2], depth, *part.shape[3:]))
        out[:, :, rows] = part
    return out
