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
    conv_by_slabs,
    conv_rows,
    depth_slabs,
    input_grad_rows,
    slabs_apply,
    weight_grad_rows,
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


def _spatial(values: torch.Tensor) -> torch.Tensor:
    return values[:, :, None, None, None]


def _slabs(block: nn.Module, x: torch.Tensor) -> list[tuple[int, int]]:
    """Depth slabs where the convolution runs by slabs, else the whole depth at once."""
    conv = standard_layers(block)[0]
    return depth_slabs(x.shape[2]) if slabs_apply(conv, x) else [(0, x.shape[2])]


def _activation_rows(block: nn.Module, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of the leaky ReLU's output (the group norm's input); without the
    slab path only all of them (:func:`_slabs`)."""
    conv, relu, _ = standard_layers(block)
    with torch.no_grad():
        if not slabs_apply(conv, x):
            return relu(conv(x))  # in place, as in F's forward
        return relu(conv_rows(conv, x, start, stop))


class _Statistics:
    """One pass over the slabs: per sample and group the mean and 1 / std of the norm's input
    ``a`` (per channel and slab, combined exactly in float64: Chan et al.'s pairwise update),
    and with an output gradient ``g`` per channel ``sum g`` and ``sum g a``."""

    def __init__(self, block: nn.Module, x: torch.Tensor, grad_f: torch.Tensor | None = None):
        _, _, norm = standard_layers(block)
        batch, channels = x.shape[0], norm.num_channels
        wide = {"dtype": torch.float64, "device": x.device}
        count, mean = 0, torch.zeros(batch, channels, **wide)
        m2, sum_g, sum_ga = (torch.zeros_like(mean) for _ in range(3))
        for start, stop in _slabs(block, x):
            a = _activation_rows(block, x, start, stop)
            var_slab, mean_slab = torch.var_mean(a, dim=(2, 3, 4), correction=0)
            n = a[0, 0].numel()
            delta = mean_slab.double() - mean
            mean += delta * (n / (count + n))
            m2 += var_slab.double() * n + delta**2 * (count * n / (count + n))
            count += n
            if grad_f is not None:
                g = grad_f[:, :, start:stop]
                sum_g += g.sum(dim=(2, 3, 4), dtype=torch.float64)
                sum_ga += (g * a).sum(dim=(2, 3, 4), dtype=torch.float64)
        groups = norm.num_groups
        by_group = mean.view(batch, groups, -1)
        group_mean = by_group.mean(dim=2)
        spread = m2.view(batch, groups, -1).sum(2)
        spread += count * ((by_group - group_mean[..., None]) ** 2).sum(2)
        group_var = spread / (count * by_group.shape[2])
        self.mean = _per_channel(group_mean, channels).to(x.dtype)
        self.rstd = _per_channel((group_var + norm.eps).rsqrt(), channels).to(x.dtype)
        self.sum_g, self.sum_ga = sum_g.to(x.dtype), sum_ga.to(x.dtype)

    def norm_affine(self, norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """Per channel ``(scale, shift)``: the norm is ``a * scale + shift``."""
        scale = self.rstd * norm.weight.detach()
        return scale, norm.bias.detach() - self.mean * scale


def add_block(block: nn.Module, x: torch.Tensor, into: torch.Tensor, alpha: float) -> None:
    """``into += alpha * F(x)`` without F's output as a tensor of its own (no autograd): the
    norm's input ``a`` is computed by slabs, then normed slab by slab into ``into``."""
    conv, relu, norm = standard_layers(block)
    with torch.no_grad():
        a = relu(conv_by_slabs(conv, x) if slabs_apply(conv, x) else conv(x))
        var, mean = torch.var_mean(a.reshape(a.shape[0], norm.num_groups, -1), dim=2, correction=0)
        mean = _per_channel(mean, a.shape[1])
        scale = _per_channel((var + norm.eps).rsqrt(), a.shape[1]) * norm.weight.detach()
        shift = _spatial(norm.bias.detach() - mean * scale)
        scale = _spatial(scale)
        for start, stop in depth_slabs(a.shape[2]):
            part = a[:, :, start:stop]
            into[:, :, start:stop].add_(part.mul_(scale).add_(shift), alpha=alpha)


def block_backward(
    block: nn.Module,
    x: torch.Tensor,
    grad_f: torch.Tensor,
    into: torch.Tensor,
    subtract_from: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """``into += J_F(x)^T grad_f``; returns F's weight gradients by ``id`` of the parameter.
    With ``subtract_from``, also ``subtract_from -= F(x)`` (a coupling's inverse, in the same
    pass: it reads the same slabs of the norm's input).

    With ``a`` the norm's input, ``x^ = (a - mean) rstd`` and ``g = grad_f``: ``dbeta = sum g``,
    ``dgamma = sum g x^``, and per group ``da = rstd (gamma g - <gamma g> - x^ <gamma g x^>)``
    (``<.>`` the group's mean), i.e. ``A g + B a + D`` per channel; the leaky ReLU's gradient
    scales it by the slope where ``a <= 0``. A first pass over the slabs sums what these need;
    a second recomputes each slab's ``a`` with the halo rows its input gradient reads, turns
    it into ``da`` and adds the slab's weight and input gradients: no tensor of the whole
    volume is made (docs/decisions.md).
    """
    conv, relu, norm = standard_layers(block)
    if not slabs_apply(conv, x):
        return _block_backward_by_autograd(block, x, grad_f, into, subtract_from)
    stats = _Statistics(block, x, grad_f)
    mean, rstd, sum_g = stats.mean, stats.rstd, stats.sum_g
    gamma = norm.weight.detach()
    centred = rstd * (stats.sum_ga - mean * sum_g)  # sum g x^, per channel
    channels, groups = norm.num_channels, norm.num_groups
    size = x[0, 0].numel() * channels // groups
    m1 = _per_channel((gamma * sum_g).reshape(x.shape[0], groups, -1).sum(2) / size, channels)
    m2 = _per_channel((gamma * centred).reshape(x.shape[0], groups, -1).sum(2) / size, channels)
    coefficient_g = _spatial(rstd * gamma)
    coefficient_a = _spatial(-rstd * rstd * m2)
    constant = _spatial(rstd * (rstd * mean * m2 - m1))
    scale, shift = (_spatial(t) for t in stats.norm_affine(norm))
    depth, halo = x.shape[2], conv.padding[0]
    weight_grad = None
    with torch.no_grad():
        for start, stop in depth_slabs(depth):
            low, high = max(start - halo, 0), min(stop + halo, depth)
            a = _activation_rows(block, x, low, high)  # the slab and its halo rows
            if subtract_from is not None:
                own = a[:, :, start - low : stop - low]
                subtract_from[:, :, start:stop].sub_(own * scale + shift)
            slope = torch.ones_like(a).masked_fill_(a <= 0, relu.negative_slope)
            a.mul_(coefficient_a).add_(constant).addcmul_(grad_f[:, :, low:high], coefficient_g)
            a.mul_(slope)  # now da
            del slope
            part = weight_grad_rows(conv, x, a[:, :, start - low : stop - low], start, stop)
            weight_grad = part.clone() if weight_grad is None else weight_grad.add_(part)
            into[:, :, start:stop].add_(input_grad_rows(conv, a, low, start, stop))
    return {
        id(norm.weight): centred.sum(0),
        id(norm.bias): sum_g.sum(0),
        id(conv.weight): weight_grad.contiguous(),
    }


def _block_backward_by_autograd(
    block: nn.Module,
    x: torch.Tensor,
    grad_f: torch.Tensor,
    into: torch.Tensor,
    subtract_from: torch.Tensor | None,
) -> dict[int, torch.Tensor]:
    """:func:`block_backward` on a backend without the slab path: F through autograd."""
    conv, _, norm = standard_layers(block)
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        f = block(x)
    grads = torch.autograd.grad(f, (x, conv.weight, norm.weight, norm.bias), grad_f)
    with torch.no_grad():
        if subtract_from is not None:
            subtract_from.sub_(f)
        into.add_(grads[0])
    return {id(p): g for p, g in zip((conv.weight, norm.weight, norm.bias), grads[1:], strict=True)}
