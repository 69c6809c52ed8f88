"""iunets' coupling block ``F`` (conv -> leaky ReLU -> group norm) evaluated and differentiated
a depth slab at a time, for the lean iUNet backward (lungseg.nets.invertible).

At level 0 a coupling's half-size tensors are half an activation each, and its input and
incoming gradient are alive throughout. PyTorch's group norm writes its output (forward) and
its input gradient (backward) as new tensors beside its input, and oneDNN's whole-volume
weight gradient a scratch of the same size: each was a third half-size tensor at the iUNet
step's peak. Here the norm is applied as ``x * scale + shift`` per channel straight into the
tensor it is added to, its backward is written over its own input, and the weight gradient is
summed over depth slabs, so the block never holds more than the convolution's output and one
slab (docs/decisions.md). The formulas are group norm's; values equal PyTorch's within float
rounding (tests/test_coupling_block.py, and the whole iUNet in tests/test_models.py).
"""

from __future__ import annotations

import torch
from iunets.layers import StandardBlock
from torch import nn

from lungseg.nets.cpu_convolution import (
    add_input_grad_by_slabs,
    conv_by_slabs,
    depth_slabs,
    slabs_apply,
    weight_grad_by_slabs,
)


def standard_layers(block: nn.Module) -> tuple[nn.Conv3d, nn.LeakyReLU, nn.GroupNorm] | None:
    """``(conv, relu, norm)`` of an iunets block this module can evaluate by slabs, else None."""
    if not isinstance(block, StandardBlock):
        return None
    layers = list(block.F)
    if not (
        len(layers) == 3
        and isinstance(layers[0], nn.Conv3d)
        and layers[0].bias is None
        and type(layers[1]) is nn.LeakyReLU
        and layers[1].inplace
        and layers[1].negative_slope > 0  # the ReLU keeps the sign: its output gives the mask
        and type(layers[2]) is nn.GroupNorm
        and layers[2].affine
    ):
        return None
    return layers[0], layers[1], layers[2]


def _per_channel(values: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, groups) -> (N, channels): each group's value for its channels."""
    return values.repeat_interleave(channels // values.shape[1], dim=1)


def _group_statistics(norm: nn.GroupNorm, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel (N, C): the group's mean and 1 / std, as group norm computes them."""
    var, mean = torch.var_mean(a.reshape(a.shape[0], norm.num_groups, -1), dim=2, correction=0)
    rstd = (var + norm.eps).rsqrt()
    return _per_channel(mean, a.shape[1]), _per_channel(rstd, a.shape[1])


def _spatial(values: torch.Tensor) -> torch.Tensor:
    return values[:, :, None, None, None]


def _activation(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The leaky ReLU's output: the group norm's input."""
    conv, relu, _ = standard_layers(block)
    with torch.no_grad():
        h = conv_by_slabs(conv, x) if slabs_apply(conv, x) else conv(x)
        return relu(h)  # in place, as in F's forward


def add_block(block: nn.Module, x: torch.Tensor, into: torch.Tensor, alpha: float) -> None:
    """``into += alpha * F(x)`` without F's output as a tensor of its own (no autograd)."""
    _, _, norm = standard_layers(block)
    a = _activation(block, x)
    mean, rstd = _group_statistics(norm, a)
    scale = rstd * norm.weight.detach()
    shift = norm.bias.detach() - mean * scale
    with torch.no_grad():
        for start, stop in depth_slabs(a.shape[2]):
            part = a[:, :, start:stop]
            into[:, :, start:stop].add_(part * _spatial(scale) + _spatial(shift), alpha=alpha)


def block_backward(
    block: nn.Module, x: torch.Tensor, grad_f: torch.Tensor, into: torch.Tensor
) -> dict[int, torch.Tensor]:
    """``into += J_F(x)^T grad_f``; returns F's weight gradients by ``id`` of the parameter.

    With ``a`` the norm's input, ``x^ = (a - mean) rstd`` and ``g = grad_f``: ``dbeta = sum g``,
    ``dgamma = sum g x^``, and per group ``da = rstd (gamma g - <gamma g> - x^ <gamma g x^>)``
    (``<.>`` the group's mean), i.e. ``A g + B a + D`` per channel; the leaky ReLU's gradient
    scales it by the slope where ``a <= 0``. ``da`` is written over ``a`` slab by slab.
    """
    conv, relu, norm = standard_layers(block)
    slabs = slabs_apply(conv, x)
    if slabs:
        a = _activation(block, x)
    else:  # a backend without the slab path: the convolution through autograd
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            h = conv(x)
        a = h.detach()
        with torch.no_grad():
            relu(a)
    mean, rstd = _group_statistics(norm, a)
    gamma = norm.weight.detach()
    with torch.no_grad():
        sum_g = grad_f.sum(dim=(2, 3, 4))
        sum_ga = torch.stack(
            [
                torch.bmm(g.reshape(g.shape[0], 1, -1), v.reshape(v.shape[0], -1, 1)).flatten()
                for g, v in zip(grad_f, a, strict=True)
            ]
        )
        centred = rstd * (sum_ga - mean * sum_g)  # sum g x^, per channel
        groups, size = norm.num_groups, a[0].numel() // norm.num_groups
        m1 = _per_channel((gamma * sum_g).reshape(a.shape[0], groups, -1).sum(2) / size, a.shape[1])
        m2 = _per_channel(
            (gamma * centred).reshape(a.shape[0], groups, -1).sum(2) / size, a.shape[1]
        )
        coefficient_g = _spatial(rstd * gamma)
        coefficient_a = _spatial(-rstd * rstd * m2)
        constant = _spatial(rstd * (rstd * mean * m2 - m1))
        for start, stop in depth_slabs(a.shape[2]):
            part = a[:, :, start:stop]
            slope = torch.ones_like(part).masked_fill_(part <= 0, relu.negative_slope)
            part.mul_(coefficient_a).add_(constant).addcmul_(
                grad_f[:, :, start:stop], coefficient_g
            )
            part.mul_(slope)
        del slope
    grads = {id(norm.weight): centred.sum(0), id(norm.bias): sum_g.sum(0)}
    if slabs:
        with torch.no_grad():
            grads[id(conv.weight)] = weight_grad_by_slabs(conv, x, a)
            add_input_grad_by_slabs(conv, a, into)
    else:
        grad_x, grads[id(conv.weight)] = torch.autograd.grad(h, (x, conv.weight), a)
        with torch.no_grad():
            into.add_(grad_x)
    return grads
