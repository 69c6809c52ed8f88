"""The library internals lungseg's own contributions rely on, checked by name and behaviour.

``lungseg.nets.invertible`` (the lean memcnn backward: ~10 % of the U-Net's step memory
instead of stock iunets' ~38 %, docs/benchmark.md) subclasses memcnn's
``InvertibleCheckpointFunction`` and reads its ``ctx``; ``lungseg.nets.models`` swaps iunets'
Cayley kernel function and wraps its resampling layers; ``lungseg.nets.cpu_convolution``
overrides ``nn.Conv3d._conv_forward`` and calls ``torch.ops.aten.mkldnn_convolution``. When an
upgrade of the pinned memcnn, iunets or torch changes one of these, a test here fails with a
message naming the pinned and installed versions (and what lungseg relies on), before the
subtler gradient and memory tests do.
"""

from __future__ import annotations

import inspect
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import nn

from lungseg.nets.versions import VOUCHED as PINNED  # what lean_memory: auto trusts


def because(package: str, what: str) -> str:
    installed = metadata.version(package)
    return (
        f"{what}: lungseg relies on this internal of {package} {PINNED[package]} "
        f"(requirements.lock); installed {package} {installed}. Re-check lungseg.nets first."
    )


def test_memcnn_checkpoint_function_keeps_the_context_lungseg_reads():
    from memcnn.models.revop import InvertibleCheckpointFunction, InvertibleModuleWrapper

    forward = inspect.signature(InvertibleCheckpointFunction.forward)
    expected = [
        "ctx", "fn", "fn_inverse", "keep_input", "num_bwd_passes", "preserve_rng_state",
        "num_inputs", "inputs_and_weights",
    ]  # fmt: skip
    assert list(forward.parameters) == expected, because(
        "memcnn", "InvertibleCheckpointFunction.forward(ctx, fn, fn_inverse, ...) arguments"
    )
    source = inspect.getsource(InvertibleCheckpointFunction.forward)
    for attribute in ("ctx.inputs", "ctx.outputs", "ctx.weights", "ctx.keep_input", "ctx.fn"):
        assert attribute in source, because("memcnn", f"{attribute} set in forward")
    wrapper = InvertibleModuleWrapper(nn.Identity(), keep_input=False)
    for attribute in (
        "_fn", "keep_input", "keep_input_inverse", "num_bwd_passes", "disable", "preserve_rng_state"
    ):  # fmt: skip
        assert hasattr(wrapper, attribute), because(
            "memcnn", f"InvertibleModuleWrapper.{attribute}"
        )


def test_iunets_additive_coupling_is_y1_x2_y2_x1_plus_f_x2():
    """The lean backward inverts the coupling by hand: y = (x2, x1 + F(x2))."""
    from iunets.layers import StandardAdditiveCoupling

    torch.manual_seed(0)
    coupling = StandardAdditiveCoupling(nn.Conv3d(2, 2, 3, padding=1), channel_split_pos=2)
    x = torch.randn(1, 4, 4, 4, 4)
    y = coupling(x)
    x1, x2 = x[:, : coupling.channel_split_pos], x[:, coupling.channel_split_pos :]
    expected = torch.cat([x2, x1 + coupling.F(x2)], dim=1)
    assert torch.allclose(y, expected), because(
        "iunets",
        "StandardAdditiveCoupling: y = (x2, x1 + F(x2)) with attributes F, channel_split_pos",
    )


def test_iunets_layers_lungseg_swaps_keep_their_names():
    from iunets.layers import OrthogonalChannelMixing, OrthogonalResamplingLayer
    from memcnn.models.revop import InvertibleModuleWrapper

    from lungseg.nets.models import build_model

    stock = build_model({"arch": "iunet", "channels": 4, "levels": 2, "lean_memory": False})
    core = stock.core
    cayley = [
        m
        for m in core.modules()
        if isinstance(m, OrthogonalResamplingLayer | OrthogonalChannelMixing)
    ]
    assert cayley, because("iunets", "OrthogonalResamplingLayer / OrthogonalChannelMixing in iUNet")
    for layer in cayley:
        assert hasattr(layer, "__calculate_kernel_matrix__"), because(
            "iunets", f"{type(layer).__name__}.__calculate_kernel_matrix__ (the Cayley kernel)"
        )
    assert {core.resampling_method, core.channel_mixing_method} == {"cayley"}, because(
        "iunets", "iUNet.resampling_method / channel_mixing_method"
    )
    for layers in (core.downsampling_layers, core.upsampling_layers):
        assert all(isinstance(w, InvertibleModuleWrapper) and hasattr(w, "_fn") for w in layers), (
            because("iunets", "iUNet.downsampling_layers / upsampling_layers of memcnn wrappers")
        )


def test_torch_convolution_hooks_lungseg_overrides_exist():
    assert hasattr(torch.ops.aten, "mkldnn_convolution"), because(
        "torch", "torch.ops.aten.mkldnn_convolution"
    )
    params = list(inspect.signature(nn.Conv3d._conv_forward).parameters)
    assert params == ["self", "input", "weight", "bias"], because(
        "torch", "nn.Conv3d._conv_forward(input, weight, bias)"
    )


@pytest.mark.parametrize("package", sorted(PINNED))
def test_pinned_versions_are_the_lock_files(package):
    repo = Path(__file__).resolve().parents[1]
    locks = ["requirements.lock"]
    if package == "torch":  # pinned by build (scripts/install-torch.sh)
        locks = ["requirements-torch-cpu.lock", "requirements-torch-cuda.lock"]
    for name in locks:
        lines = [line.split(";")[0].strip() for line in (repo / name).read_text().splitlines()]
        pinned = {f"{package}=={PINNED[package]}", f"{package}==={PINNED[package]}"}
        pinned |= {f"{package}=={PINNED[package]}+cpu"}
        assert pinned & set(lines), f"update PINNED with {package}'s pin in {name}"


def test_iunets_layers_compute_their_kernel_through_the_swapped_function():
    """lungseg swaps ``__calculate_kernel_matrix__`` on each layer for its exact-gradient Cayley
    map; that only matters if the layers' forward (``kernel_matrix``) really calls it."""
    from iunets.layers import OrthogonalChannelMixing, OrthogonalResamplingLayer

    from lungseg.nets import models

    model = models.build_model({"arch": "iunet", "channels": 4, "levels": 2})
    layers = [
        m
        for m in model.core.modules()
        if isinstance(m, OrthogonalResamplingLayer | OrthogonalChannelMixing)
    ]
    calls = []
    for layer in layers:
        assert layer.__calculate_kernel_matrix__ is models.cayley_kernel_matrix

        def spy(*args, **kwargs):
            calls.append(1)
            return models.cayley_kernel_matrix(*args, **kwargs)

        layer.__calculate_kernel_matrix__ = spy
    with torch.no_grad():
        model(torch.zeros(1, 1, 8, 8, 8))
    assert len(calls) >= len(layers), because(
        "iunets", "the layers' kernel_matrix calls self.__calculate_kernel_matrix__"
    )
