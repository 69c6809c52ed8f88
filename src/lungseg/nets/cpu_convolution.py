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
memory than ``slow_conv3d``'s im2col buffers. 1x1x1 kernels (matrix products, which PyTorch's
path does ~2x faster: 16 -> 1 channels at 48^3, 8 ms vs 16-26 ms forward and backward) and other
devices, dtypes, padding modes and autocast regions (PyTorch's path casts, this one would not)
take PyTorch's own choice; strided, dilated and grouped convolutions run their forward only on
oneDNN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_ONES = (1, 1, 1)


def _onednn(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple
) -> torch.Tensor:
    return torch.ops.aten.mkldnn_convolution(
        input.contiguous(), weight.contiguous(), bias, padding, _ONES, _ONES, 1
    )


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
            # (C_in, N, ...) * (C_out, N, ...) -> (C_in, C_out, k, k, k): sums over the batch.
            by_channel = _onednn(input.transpose(0, 1), grad_output.transpose(0, 1), None, padding)
            grad_weight = by_channel.transpose(0, 1).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(dim=(0, 2, 3, 4))
        return grad_input, grad_weight, grad_bias, None


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
    """``nn.Conv3d`` that runs on oneDNN on CPU (kernels above 1x1x1): backward too at stride 1."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if (
            isinstance(self.padding, str)
            or tuple(self.kernel_size) == _ONES  # a plain matrix product: PyTorch's is faster
            or not _onednn_usable(input, weight, self.padding_mode)
        ):
            return super()._conv_forward(input, weight, bias)
        padding = tuple(self.padding)
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


def use_onednn_convolutions(model: nn.Module) -> int:
    """Make every plain ``nn.Conv3d`` of ``model`` (iunets' couplings included) an
    :class:`OneDNNConv3d`; parameters and state_dict keys are unchanged. Returns the count."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = OneDNNConv3d  # same attributes; only the forward differs
            count += 1
    return count
