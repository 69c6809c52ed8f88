"""oneDNN 3-D convolutions: same outputs and gradients as PyTorch's own path, on oneDNN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from lungseg.nets.cpu_convolution import OneDNNConv3d, use_onednn_convolutions

# (batch, in, out, kernel, padding, stride, dilation, groups, bias, spatial)
CASES = [
    (1, 8, 8, 3, 1, 1, 1, 1, False, (12, 10, 8)),  # an iUNet coupling: half width, "same"
    (2, 3, 5, 3, 1, 1, 1, 1, True, (6, 7, 5)),  # batch > 1 and bias
    (1, 4, 2, 1, 0, 1, 1, 1, True, (5, 4, 3)),  # 1x1x1 head: matrix products, forward and backward
    (2, 3, 1, 1, 0, 1, 1, 1, True, (4, 5, 3)),  # the same, batch > 1
    (1, 2, 3, (3, 1, 5), (0, 0, 2), 1, 1, 1, True, (7, 6, 9)),  # anisotropic, "valid" in z
    (1, 1, 4, 3, 2, 1, 1, 1, False, (4, 4, 4)),  # padding = kernel - 1 (largest supported)
    (1, 4, 4, 2, 0, 2, 1, 1, True, (8, 8, 8)),  # strided: forward only on oneDNN
    (1, 4, 4, 3, 2, 1, 2, 1, False, (8, 8, 8)),  # dilated: forward only on oneDNN
    (1, 4, 6, 3, 1, 1, 1, 2, True, (6, 6, 6)),  # grouped: forward only on oneDNN
]


def pair(batch, c_in, c_out, kernel, padding, stride, dilation, groups, bias):
    reference = torch.nn.Conv3d(
        c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation,
        groups=groups, bias=bias,
    )  # fmt: skip
    with torch.no_grad():  # PyTorch's init leaves a tiny bias: perturb everything
        for parameter in reference.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    fast = torch.nn.Sequential(copy.deepcopy(reference))
    assert use_onednn_convolutions(fast) == 1
    return reference, fast


@pytest.mark.parametrize(
    ("batch", "c_in", "c_out", "kernel", "padding", "stride", "dilation", "groups", "bias", "size"),
    CASES,
)
def test_same_outputs_and_gradients_as_pytorch(
    batch, c_in, c_out, kernel, padding, stride, dilation, groups, bias, size
):
    torch.manual_seed(0)
    reference, fast = pair(batch, c_in, c_out, kernel, padding, stride, dilation, groups, bias)
    assert type(fast[0]) is OneDNNConv3d
    x = torch.randn(batch, c_in, *size)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_fast = reference(x_ref), fast(x_fast)
    torch.testing.assert_close(out_fast, out_ref, atol=1e-5, rtol=1e-4)
    weights = torch.randn_like(out_ref)  # a loss whose gradient is not uniform
    (out_ref * weights).sum().backward()
    (out_fast * weights).sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    for (name, a), b in zip(fast[0].named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_gradient_only_where_asked():
    """A frozen weight gets no gradient; an input without grad gets none either."""
    _, fast = pair(1, 3, 3, 3, 1, 1, 1, 1, True)
    fast[0].weight.requires_grad_(False)
    x = torch.randn(1, 3, 5, 5, 5, requires_grad=True)
    fast(x).sum().backward()
    assert fast[0].weight.grad is None and fast[0].bias.grad is not None and x.grad is not None
    fast[0].weight.requires_grad_(True)
    fast[0].bias.grad = None
    fast(torch.randn(1, 3, 5, 5, 5)).square().sum().backward()
    assert fast[0].weight.grad is not None and fast[0].bias.grad is not None


def test_stride_one_backward_runs_on_onednn_only():
    """The case PyTorch sends to slow_conv3d (8 channels at 24^3): no native conv at all."""
    _, fast = pair(1, 8, 8, 3, 1, 1, 1, 1, False)
    x = torch.randn(1, 8, 24, 24, 24, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        fast(x).square().sum().backward()
    calls = {event.key: event.count for event in trace.key_averages()}
    assert calls.get("aten::mkldnn_convolution") == 3  # forward, input and weight gradients
    slow = [key for key in calls if "slow_conv" in key or key == "aten::convolution_backward"]
    assert slow == []


def test_one_by_one_kernels_are_matrix_products():
    """Forward and backward as matrix products: no convolution, so neither oneDNN's reorders
    nor PyTorch's scratch-heavy backward."""
    _, fast = pair(1, 16, 1, 1, 0, 1, 1, 1, True)
    x = torch.randn(1, 16, 8, 8, 8, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        fast(x).sum().backward()
    calls = {event.key for event in trace.key_averages()}
    assert not {c for c in calls if "convolution" in c}, calls
    assert "aten::matmul" in calls


def test_other_devices_dtypes_and_padding_modes_keep_pytorchs_path():
    reference, fast = pair(1, 2, 2, 3, 1, 1, 1, 1, True)
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    fast.double(), reference.double()
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        out = fast(x)
    assert "aten::mkldnn_convolution" not in {event.key for event in trace.key_averages()}
    torch.testing.assert_close(out, reference(x))
    circular = torch.nn.Conv3d(2, 2, 3, padding=1, padding_mode="circular")
    model = torch.nn.Sequential(circular)
    use_onednn_convolutions(model)
    y = torch.randn(1, 2, 4, 4, 4)
    expected = torch.nn.functional.conv3d(
        torch.nn.functional.pad(y, (1,) * 6, mode="circular"), circular.weight, circular.bias
    )
    torch.testing.assert_close(model(y), expected)


# Stride-1 cases above the slab size: (in, out, kernel, padding, spatial, slab elements).
SLAB_CASES = [
    (8, 8, 3, 1, (12, 10, 8), 8 * 10 * 8 * 3),  # a coupling, 1-row slabs
    (3, 5, 3, 1, (13, 4, 5), 5 * 4 * 5 * 4),  # out > in channels, uneven last slab
    (2, 3, (3, 1, 5), (0, 0, 2), (9, 6, 7), 3 * 6 * 7 * 3),  # "valid" in depth
    (1, 4, 3, 2, (7, 4, 4), 4 * 6 * 6 * 3),  # padding = kernel - 1: output deeper than input
    (2, 2, 5, (1, 2, 2), (21, 5, 5), 525),  # halo wider than the padding
]


@pytest.mark.parametrize("limit_on", ["elements", "per_channel"])
@pytest.mark.parametrize(("c_in", "c_out", "kernel", "padding", "size", "slab"), SLAB_CASES)
def test_depth_slabs_give_the_whole_convolutions_result(
    c_in, c_out, kernel, padding, size, slab, limit_on, monkeypatch
):
    """Problems above SLAB_ELEMENTS, or with more than SPATIAL_ELEMENTS voxels a channel, run
    in depth slabs, no call over the limit, with PyTorch's outputs and gradients."""
    import lungseg.nets.cpu_convolution as cpu_convolution

    torch.manual_seed(1)
    reference, fast = pair(2, c_in, c_out, kernel, padding, 1, 1, 1, True)
    x = torch.randn(2, c_in, *size)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref = reference(x_ref)
    weights = torch.randn_like(out_ref)
    (out_ref * weights).sum().backward()
    unlimited = 2**40
    if limit_on == "elements":
        limit = 2 * slab  # batch 2
        limits = {"SLAB_ELEMENTS": limit, "SPATIAL_ELEMENTS": unlimited}
        pieces = {"PIECE_ELEMENTS": limit, "PIECE_SPATIAL": unlimited}
    else:  # the same rows as one channel's voxels
        limit = slab // max(c_in, c_out)
        limits = {"SLAB_ELEMENTS": unlimited, "SPATIAL_ELEMENTS": limit}
        pieces = {"PIECE_ELEMENTS": unlimited, "PIECE_SPATIAL": limit}
    for name, value in {**limits, **pieces}.items():
        monkeypatch.setattr(cpu_convolution, name, value)
    sizes = []  # per oneDNN call: the larger of its two operands (elements or a channel's)

    def whole(input, weight, bias, padding):
        if limit_on == "elements":
            sizes.append(max(input.numel(), weight.numel()))
        else:
            sizes.append(max(input[0, 0].numel(), weight[0, 0].numel()))
        return whole_convolution(input, weight, bias, padding)

    whole_convolution = cpu_convolution._whole
    monkeypatch.setattr(cpu_convolution, "_whole", whole)
    out_fast = fast(x_fast)
    assert len(sizes) > 1 and max(sizes) <= limit  # the forward: 2+ slabs
    (out_fast * weights).sum().backward()
    assert len(sizes) > 3 * 2 and max(sizes) <= limit  # input and weight gradients too
    torch.testing.assert_close(out_fast, out_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    for (name, a), b in zip(fast[0].named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_problems_under_the_slab_size_run_whole():
    _, fast = pair(1, 8, 8, 3, 1, 1, 1, 1, False)
    x = torch.randn(1, 8, 16, 16, 16, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        fast(x).square().sum().backward()
    assert oned_calls(trace) == 3


def oned_calls(trace) -> int:
    return {event.key: event.count for event in trace.key_averages()}["aten::mkldnn_convolution"]
