"""iunets' coupling block by depth slabs (lungseg.nets.coupling_block) against PyTorch's own
forward and autograd, and the slab convolutions it uses against whole-volume ones."""

from __future__ import annotations

import itertools

import pytest
import torch
from iunets.layers import StandardBlock

from lungseg.nets import cpu_convolution
from lungseg.nets.coupling_block import add_block, block_backward, standard_layers

# (F's input channels, output channels, group-norm groups, batch, spatial size): depths below,
# at and off the eight slabs, odd channel counts as iunets makes them, two groups.
CASES = [
    (4, 4, 1, 1, (11, 6, 5)),
    (3, 2, 1, 1, (16, 5, 4)),
    (4, 4, 2, 2, (3, 4, 6)),
    (8, 8, 1, 1, (9, 7, 7)),
]


def _block(cin: int, cout: int, groups: int, onednn: bool) -> StandardBlock:
    torch.manual_seed(0)
    block = StandardBlock(3, cin, cout)
    if groups != 1:
        block.seq[2] = block.F[2] = torch.nn.GroupNorm(groups, cout, eps=1e-3)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # iunets starts F at zero (an identity coupling): that hides bugs
        for parameter in block.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    if onednn:
        cpu_convolution.use_onednn_convolutions(block)
    return block


@pytest.mark.parametrize("onednn", [True, False], ids=["oneDNN slabs", "PyTorch conv"])
@pytest.mark.parametrize(("cin", "cout", "groups", "batch", "size"), CASES)
def test_block_by_slabs_equals_pytorch(cin, cout, groups, batch, size, onednn):
    block = _block(cin, cout, groups, onednn)
    assert standard_layers(block) is not None
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cin, *size, generator=generator)
    g = torch.randn(batch, cout, *size, generator=generator)
    base = torch.randn(batch, cout, *size, generator=generator)

    x_ref = x.clone().requires_grad_()
    f = block(x_ref)
    f.backward(g)
    into = base.clone()
    add_block(block, x, into, alpha=-1.0)
    torch.testing.assert_close(into, base - f.detach(), atol=1e-5, rtol=1e-4)

    start = torch.randn(batch, cin, *size, generator=generator)
    accumulated = start.clone()
    grads = block_backward(block, x.clone(), g, accumulated)
    torch.testing.assert_close(accumulated, start + x_ref.grad, atol=1e-4, rtol=1e-4)
    # the coupling's inverse in the same pass: y2 - F(x2), and the same gradients
    accumulated, inverted = start.clone(), base.clone()
    again = block_backward(block, x.clone(), g, accumulated, subtract_from=inverted)
    torch.testing.assert_close(inverted, base - f.detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(accumulated, start + x_ref.grad, atol=1e-4, rtol=1e-4)
    assert again.keys() == grads.keys()
    for name, parameter in block.named_parameters():
        torch.testing.assert_close(
            grads[id(parameter)], parameter.grad, atol=1e-4, rtol=1e-4, msg=name
        )


def test_other_blocks_are_left_to_autograd():
    block = _block(4, 4, 1, onednn=False)
    block.F[1] = torch.nn.ReLU(inplace=True)  # slope 0: its output no longer gives the mask
    assert standard_layers(block) is None
    assert standard_layers(torch.nn.Conv3d(2, 2, 3)) is None


@pytest.mark.parametrize("size", [(17, 6, 5), (5, 4, 4), (8, 3, 9), (2, 3, 3)])
@pytest.mark.parametrize("batch", [1, 2])
def test_row_convolutions_and_gradients_add_up_to_whole_volume_ones(size, batch):
    """Any cut of the depth into row ranges: each range's output rows, weight-gradient part
    and input-gradient rows (from the gradient rows its halo reaches) equal PyTorch's."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 5, 3, padding=1, bias=True)
    cpu_convolution.use_onednn_convolutions(conv)
    x = torch.randn(batch, 3, *size)
    g = torch.randn(batch, 5, *size)
    x_ref = x.clone().requires_grad_()
    whole = torch.nn.functional.conv3d(x_ref, conv.weight, conv.bias, padding=1)
    whole.backward(g)
    depth = size[0]
    cuts = sorted({0, depth, *range(0, depth, 3), min(1, depth)})
    weight_grad = torch.zeros_like(conv.weight)
    with torch.no_grad():
        for start, stop in itertools.pairwise(cuts):
            torch.testing.assert_close(
                cpu_convolution.conv_rows(conv, x, start, stop),
                whole[:, :, start:stop].detach(),
                atol=1e-5,
                rtol=1e-4,
            )
            weight_grad += cpu_convolution.weight_grad_rows(
                conv, x, g[:, :, start:stop], start, stop
            )
            low, high = max(start - 1, 0), min(stop + 1, depth)
            torch.testing.assert_close(
                cpu_convolution.input_grad_rows(conv, g[:, :, low:high], low, start, stop),
                x_ref.grad[:, :, start:stop],
                atol=1e-4,
                rtol=1e-4,
            )
        torch.testing.assert_close(weight_grad, conv.weight.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            cpu_convolution.conv_by_slabs(conv, x), whole.detach(), atol=1e-5, rtol=1e-4
        )
