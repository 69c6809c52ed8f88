"""3-D convolutions on oneDNN on CPU, forward and backward, whatever the problem size.

For 3-D convolutions it deems small (under ~32 channels at 24^3, ~16 at 48^3: the iUNet's
couplings convolve half the channels) PyTorch's CPU backend picks its unvectorised
``slow_conv3d``, forward and backward. oneDNN is ~10x faster there. The backward of a stride-1
convolution is itself two convolutions, which oneDNN runs as well:

* input gradient: the output gradient convolved with the weight flipped in space and with its
  in/out channels swapped, padded by ``kernel - 1 - padding``;
* weight gradient: the input convolved with the output gradient, batch and channel axes swapped
  (the batch becomes the summed axis, the gradient the kernel), padded by ``padding``: a
  ``kernel``-sized result.

Same arithmetic as PyTorch's own path (tested to float tolerance); it also needs less scratch
memory than ``slow_conv3d``'s im2col buffers. Other devices, dtypes, padding modes and autocast
regions (PyTorch's path casts, this one would not) take PyTorch's own choice; strided, dilated
and grouped convolutions run their forward only on oneDNN. A plain 1x1x1 convolution (the output
heads) is a matrix product, forward and backward: PyTorch's CPU backward allocates an input-sized
scratch buffer besides the input gradient (a C = 16 head at 128^3: +1 full-resolution activation
at the iUNet's backward peak), and its forward (16 -> 1 channels at 512 x 512 x N, 2 threads)
costs 18.7 ms a slice at N = 128 and 214 ms at N = 256 (oneDNN's reference reorders, below),
the product 3.1 and 3.8 ms.

Whole-CT shapes: oneDNN runs a stride-1 convolution whose tensors pass 2^29 elements, or whose
channels pass 2^26 voxels (512 x 512 x 256), 2.5-4x slower per voxel (its reorders fall back to
reference kernels), so these run in depth slabs, each reading its halo rows; the weight
gradient sums the slabs' (same results, tested).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_ONES = (1, 1, 1)


# oneDNN (torch 2.13's) takes its vectorised layout conversions up to this many elements a tensor
# and, per channel, up to SPATIAL_ELEMENTS voxels (8-channel blocks of 4-byte floats: 2 GiB);
# past either, reference ones, 2.5-4x slower per voxel (docs/decisions.md). Such problems are cut.
SLAB_ELEMENTS = 2**29
SPATIAL_ELEMENTS = 2**26 - 1
# Slabs copy their input rows and their output (the weight gradient: its two operands' rows):
# pieces this small keep those copies at 1 GiB together (the checkpointed U-Net's whole-CT peak
# is within that of this machine's budget), and half the per-channel limit.
PIECE_ELEMENTS = 2**27
PIECE_SPATIAL = 2**25


def _onednn(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple,
    rows: int | None = None,
) -> torch.Tensor:
    """Stride-1 oneDNN convolution, in depth slabs of ``rows`` output rows, or where it is too
    large (:func:`_too_large`) of the piece sizes'."""
    if input.dim() != 5:
        return _whole(input, weight, bias, padding)
    depth, kernel = input.shape[2], weight.shape[2]
    out_plane = 1  # one output channel's row: padding can make it larger than the input's
    for size, k, pad in zip(input.shape[3:], weight.shape[3:], padding[1:], strict=True):
        out_plane *= size + 2 * pad - k + 1
    plane = max(input[0, 0, 0].numel(), out_plane)
    per_row = input.shape[0] * max(input.shape[1], weight.shape[0]) * plane
    out_depth = depth + 2 * padding[0] - kernel + 1
    if rows is None and not _too_large(per_row, plane, max(depth, out_depth)):
        return _whole(input, weight, bias, padding)
    rows = _piece_rows(per_row, plane, kernel, rows)
    out = None
    for start, stop, piece, piece_padding, first in _depth_pieces(
        input, out_depth, rows, kernel, padding
    ):
        part = _whole(piece, weight, bias, piece_padding)[:, :, first : first + stop - start]
        if out is None:  # written slab by slab: the whole output and one slab's, never two
            out = part.new_empty((*part.shape[:2], out_depth, *part.shape[3:]))
        out[:, :, start:stop] = part
    return out


def _too_large(per_row: int, plane: int, depth: int) -> bool:
    """Whether ``depth`` rows of ``per_row`` elements (``plane`` a channel) are past oneDNN's
    vectorised reorders."""
    return per_row * depth > SLAB_ELEMENTS or plane * depth > SPATIAL_ELEMENTS


def _piece_rows(per_row: int, plane: int, kernel: int, rows: int | None = None) -> int:
    """Output rows of one slab: its input rows (halo included) within both piece sizes, and
    at most ``rows`` where given."""
    pieces = max(1, min(PIECE_ELEMENTS // per_row, PIECE_SPATIAL // plane) - kernel + 1)
    return pieces if rows is None else min(rows, pieces)


def _whole(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple
) -> torch.Tensor:
    return torch.ops.aten.mkldnn_convolution(
        input.contiguous(), weight.contiguous(), bias, padding, _ONES, _ONES, 1
    )


def _depth_pieces(input: torch.Tensor, out_depth: int, rows: int, kernel: int, padding: tuple):
    """Per slab of output rows ``[start, stop)``: :func:`_rows_piece` of it."""
    for start in range(0, out_depth, rows):
        stop = min(start + rows, out_depth)
        yield start, stop, *_rows_piece(input, start, stop, kernel, padding)


def _rows_piece(input: torch.Tensor, start: int, stop: int, kernel: int, padding: tuple):
    """The input rows output rows ``[start, stop)`` of a stride-1 convolution read, the padding
    to convolve them with and the first row of that convolution's output that is ``start``.

    Zero padding in depth is only real at the volume's faces: an inner slab reads its halo rows
    unpadded (no wasted rows), a face slab pads by ``padding[0]`` and drops what it adds."""
    depth, pad = input.shape[2], padding[0]
    low, high = start - pad, stop - pad + kernel - 1
    own = 0 if low >= 0 and high <= depth else pad
    first = start - max(low, 0) + own - pad
    return input[:, :, max(low, 0) : min(high, depth)], (own, *padding[1:]), first


def _weight_grad(
    input: torch.Tensor,
    grad_output: torch.Tensor,
    padding: tuple,
    kernel: tuple,
):
    """(C_in, N, ...) * (C_out, N, ...) -> (C_out, C_in, k, k, k): sums over the batch, and
    where the problem is too large (:func:`_too_large`) over depth slabs of the piece sizes'."""
    by_channel = input.transpose(0, 1)
    kernel_grad = grad_output.transpose(0, 1)
    per_row = max(input[:, :, 0].numel(), grad_output[:, :, 0].numel())
    plane = max(input[0, 0, 0].numel(), grad_output[0, 0, 0].numel())
    depth = max(input.shape[2], grad_output.shape[2])
    if not _too_large(per_row, plane, depth):
        return _whole(by_channel, kernel_grad, None, padding).transpose(0, 1).contiguous()
    # Blocks of channels would copy nothing, but oneDNN runs a convolution with so large a
    # kernel (the gradient) several times slower than depth slabs (docs/decisions.md).
    rows = _piece_rows(per_row, plane, kernel[0])
    total = None
    for start, stop, piece, piece_padding, first in _depth_pieces(
        by_channel, grad_output.shape[2], rows, kernel[0], padding
    ):
        part = _whole(piece, kernel_grad[:, :, start:stop], None, piece_padding)
        part = part[:, :, first : first + kernel[0]]
        total = part if total is None else total.add_(part)
    return total.transpose(0, 1).contiguous()


class _StrideOneConv3d(torch.autograd.Function):
    """Stride-1, ungrouped, undilated 3-D convolution whose backward also runs on oneDNN."""

    @staticmethod
    def forward(ctx: Any, input, weight, bias, padding):  # noqa: A002 - torch's own names
        ctx.save_for_backward(input, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return _onednn(input, weight, bias, padding)

    @staticmethod
    def backward(ctx: Any, grad_output):
        input, weight = ctx.saved_tensors
        padding = ctx.padding
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(2, 3, 4).transpose(0, 1)
            kernel = weight.shape[2:]
            transposed = tuple(k - 1 - p for k, p in zip(kernel, padding, strict=True))
            grad_input = _onednn(grad_output, flipped, None, transposed)
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_grad(input, grad_output, padding, weight.shape[2:])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(dim=(0, 2, 3, 4))
        return grad_input, grad_weight, grad_bias, None


class _PointwiseConv3d(torch.autograd.Function):
    """1x1x1 convolution as matrix products, forward and backward, without scratch."""

    @staticmethod
    def forward(ctx: Any, input, weight, bias):  # noqa: A002 - torch's own names
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        out = torch.matmul(weight.flatten(1), input.flatten(2))  # (N, C_out, voxels)
        out = out.view(input.shape[0], weight.shape[0], *input.shape[2:])
        return out if bias is None else out.add_(bias.view(1, -1, 1, 1, 1))

    @staticmethod
    def backward(ctx: Any, grad_output):
        input, weight = ctx.saved_tensors
        matrix = weight.flatten(1)  # (C_out, C_in)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # W^T g per voxel, written once into the input's shape
            # One product per batch element into the result: a batched matmul of the
            # transposed weight makes a contiguous copy of its whole-volume result first.
            grad_input = torch.empty(input.shape, dtype=grad_output.dtype, device=input.device)
            for g, into in zip(grad_output, grad_input, strict=True):
                torch.mm(matrix.T, g.flatten(1), out=into.view(into.shape[0], -1))
        if ctx.needs_input_grad[1]:  # g x^T summed over voxels and the batch
            grad_weight = sum(
                g.flatten(1) @ x.flatten(1).T for g, x in zip(grad_output, input, strict=True)
            ).view(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(dim=(0, 2, 3, 4))
        return grad_input, grad_weight, grad_bias


def _onednn_usable(input: torch.Tensor, weight: torch.Tensor, padding_mode: str) -> bool:
    return (
        input.device.type == "cpu"
        and input.dtype == weight.dtype == torch.float32
        and padding_mode == "zeros"
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        # Under autocast PyTorch's own path casts to the lower precision; this one would not.
        and not torch.is_autocast_enabled("cpu")
    )


class OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs on oneDNN on CPU (kernels above 1x1x1): backward too at stride 1.

    Plain 1x1x1 kernels are matrix products, forward and backward."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if isinstance(self.padding, str) or not _onednn_usable(input, weight, self.padding_mode):
            return super()._conv_forward(input, weight, bias)
        padding = tuple(self.padding)
        if tuple(self.kernel_size) == _ONES:  # a plain matrix product: no oneDNN reorders
            if (
                padding == (0, 0, 0)
                and tuple(self.stride) == tuple(self.dilation) == _ONES
                and self.groups == 1
                and input.dim() == 5
            ):
                return _PointwiseConv3d.apply(input, weight, bias)
            return super()._conv_forward(input, weight, bias)
        if (
            tuple(self.stride) == _ONES
            and tuple(self.dilation) == _ONES
            and self.groups == 1
            and all(p <= k - 1 for k, p in zip(self.kernel_size, padding, strict=True))
        ):
            return _StrideOneConv3d.apply(input, weight, bias, padding)
        # Forward on oneDNN; PyTorch differentiates it (its backward picks its own backend).
        return torch.ops.aten.mkldnn_convolution(
            input.contiguous(), weight, bias, padding, self.stride, self.dilation, self.groups
        )


def _slab_rows(depth: int) -> int:
    """Rows of one of :func:`depth_slabs`' slabs."""
    return max(1, -(-depth // 8))


def depth_slabs(depth: int) -> list[tuple[int, int]]:
    """Eight depth slabs ``(start, stop)``: a working set 1/8 of a whole tensor's."""
    rows = _slab_rows(depth)
    return [(start, min(start + rows, depth)) for start in range(0, depth, rows)]


def slabs_apply(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether the row functions below (:func:`conv_rows` and its gradients) apply to
    ``conv`` at ``x``."""
    pad = conv.padding
    return (
        type(conv) is OneDNNConv3d
        and _onednn_usable(x, conv.weight, conv.padding_mode)
        and tuple(conv.stride) == tuple(conv.dilation) == (1, 1, 1)
        and conv.groups == 1
        and not isinstance(pad, str)
        and all(k == 2 * p + 1 for k, p in zip(conv.kernel_size, pad, strict=True))  # "same"
    )


def conv_rows(conv: nn.Conv3d, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Output rows ``[start, stop)`` of ``conv(x)`` (where :func:`slabs_apply`; no autograd),
    from the input rows they read."""
    piece, padding, first = _rows_piece(x, start, stop, conv.weight.shape[2], tuple(conv.padding))
    bias = None if conv.bias is None else conv.bias.detach()
    return _whole(piece, conv.weight.detach(), bias, padding)[:, :, first : first + stop - start]


def weight_grad_rows(
    conv: nn.Conv3d, x: torch.Tensor, grad_rows: torch.Tensor, start: int, stop: int
) -> torch.Tensor:
    """The part of ``conv``'s weight gradient at input ``x`` that output rows ``[start, stop)``
    contribute, ``grad_rows`` their output gradient (summed over the batch)."""
    kernel = conv.weight.shape[2]
    piece, padding, first = _rows_piece(x.transpose(0, 1), start, stop, kernel, tuple(conv.padding))
    part = _whole(piece, grad_rows.transpose(0, 1), None, padding)
    return part[:, :, first : first + kernel].transpose(0, 1)


def input_grad_rows(
    conv: nn.Conv3d, grad_h: torch.Tensor, offset: int, start: int, stop: int
) -> torch.Tensor:
    """Rows ``[start, stop)`` of ``J_conv^T grad`` (where :func:`slabs_apply`), from
    ``grad_h``: the output gradient's rows ``[offset, offset + len)``, which must hold the rows
    ``[start, stop)`` reads (its halo, up to the volume's faces)."""
    weight = conv.weight.detach().flip(2, 3, 4).transpose(0, 1)
    piece, padding, first = _rows_piece(
        grad_h, start - offset, stop - offset, weight.shape[2], tuple(conv.padding)
    )
    return _whole(piece, weight, None, padding)[:, :, first : first + stop - start]


def conv_by_slabs(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` (where :func:`slabs_apply`; no autograd) in the slabs of :func:`depth_slabs`.

    oneDNN converts a whole-volume call's input and output to its blocked layouts, whose
    channel blocks (8 with AVX2, 16 with AVX-512) pad an 8-channel tensor to twice its size:
    at an iUNet coupling's level-0 backward that was 2.5 half-size tensors of scratch on an
    AVX-512 CPU; a slab's are an eighth."""
    bias = None if conv.bias is None else conv.bias.detach()
    return _onednn(x, conv.weight.detach(), bias, tuple(conv.padding), _slab_rows(x.shape[2]))


def use_onednn_convolutions(model: nn.Module) -> int:
    """Make every plain ``nn.Conv3d`` of ``model`` (iunets' couplings included) an
    :class:`OneDNNConv3d`; parameters and state_dict keys are unchanged. Returns the count."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = OneDNNConv3d  # same attributes; only the forward differs
            count += 1
    return count
