"""Models: output contract, invertibility, memory-efficient gradients, a tiny overfit."""

from __future__ import annotations

import pytest
import torch

from lungseg.nets.models import build_model, cayley_kernel_matrix

torch.set_num_threads(1)

SMALL = {"channels": 4, "levels": 3, "blocks_per_level": 2}


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb all weights: iUNet couplings start as the identity, which hides bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize(
    ("arch", "deep_supervision", "levels", "shape", "expected"),
    [
        ("unet", False, 3, (2, 1, 16, 16, 8), [(2, 1, 16, 16, 8)]),
        ("unet", True, 3, (2, 1, 16, 16, 8), [(2, 1, 16, 16, 8), (2, 1, 8, 8, 4), (2, 1, 4, 4, 2)]),
        ("iunet", False, 3, (1, 1, 8, 16, 8), [(1, 1, 8, 16, 8)]),
        ("iunet", True, 3, (1, 1, 8, 16, 8), [(1, 1, 8, 16, 8), (1, 1, 4, 8, 4), (1, 1, 2, 4, 2)]),
        ("iunet", True, 2, (1, 1, 8, 8, 8), [(1, 1, 8, 8, 8), (1, 1, 4, 4, 4)]),
        ("unet", True, 2, (1, 1, 6, 6, 6), [(1, 1, 6, 6, 6), (1, 1, 3, 3, 3)]),
    ],
)
def test_output_shapes(arch, deep_supervision, levels, shape, expected):
    settings = {**SMALL, "arch": arch, "levels": levels, "deep_supervision": deep_supervision}
    model = build_model({**settings, "lr": 1e-3, "epochs": 3})  # training keys are ignored
    outputs = model(torch.randn(shape))
    assert isinstance(outputs, list)
    assert [tuple(o.shape) for o in outputs] == expected
    assert all(o.dtype == torch.float32 for o in outputs)


@pytest.mark.parametrize("arch", ["unet", "iunet"])
@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 1, 16, 16, 10), "divisible by 2\\*\\*\\(levels-1\\) = 4"),
        ((1, 2, 8, 8, 8), "\\(B, 1, D, H, W\\)"),
    ],
)
def test_bad_input_is_named(arch, shape, message):
    model = build_model({**SMALL, "arch": arch})
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"arch": "vnet"}, "unknown model arch"),
        ({"arch": "unet", "levels": 1}, "levels must be >= 2"),
    ],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        build_model(settings)


def test_missing_model_keys_take_the_schema_defaults():
    """Defaults live in the schema only: ModelSettings has none of its own."""
    from lungseg.core.settings import schema_defaults
    from lungseg.nets.models import ModelSettings

    defaults = schema_defaults("training")
    chosen = ModelSettings.from_dict({})
    for key in (
        "arch",
        "channels",
        "levels",
        "blocks_per_level",
        "deep_supervision",
        "lean_memory",
    ):
        assert getattr(chosen, key) == defaults[key]


def test_cayley_kernel_matches_iunets_values_with_exact_gradient():
    from iunets.layers import __calculate_kernel_matrix_cayley__ as iunets_cayley

    weight = torch.randn(3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cayley_kernel_matrix(weight), iunets_cayley(weight))
    assert torch.autograd.gradcheck(cayley_kernel_matrix, (weight.requires_grad_(),))


def test_invertible_core_inverts():
    torch.manual_seed(0)
    model = randomised(build_model({**SMALL, "arch": "iunet"}))
    x = torch.randn(1, 4, 16, 8, 16)
    with torch.no_grad():
        # memcnn frees the storage of a module's input, so feed clones.
        reconstructed = model.core.inverse(model.core(x.clone()))
    torch.testing.assert_close(reconstructed, x, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("lean_memory", [False, True])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_memory_efficient_gradients_equal_plain_backprop(deep_supervision, lean_memory):
    settings = {**SMALL, "arch": "iunet", "deep_supervision": deep_supervision}
    efficient = randomised(
        build_model({**settings, "memory_efficient": True, "lean_memory": lean_memory})
    )
    plain = build_model({**settings, "memory_efficient": False})
    plain.load_state_dict(efficient.state_dict())
    x = torch.randn(1, 1, 16, 16, 8, generator=torch.Generator().manual_seed(1))
    for model in (efficient, plain):
        sum((out**2).mean() for out in model(x)).backward()
    for (name, a), b in zip(efficient.named_parameters(), plain.parameters(), strict=True):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("batch", [1, 2])
def test_skip_connections_stay_at_the_head_of_their_tensors_in_the_lean_backward(
    batch, monkeypatch
):
    """Each decoder concatenation leaves the skip part in place (the rest of the output and of
    its gradient released) and the encoder's split fills the rest in again, at every level:
    gradients as plain autograd's."""
    from lungseg.nets import invertible

    released, filled = [], []
    release, fill = invertible.release_channels, invertible._fill_tail
    monkeypatch.setattr(
        invertible, "release_channels", lambda t, first: released.append(first) or release(t, first)
    )
    monkeypatch.setattr(
        invertible, "_fill_tail", lambda *args, **kw: filled.append(args[2]) or fill(*args, **kw)
    )
    settings = {**SMALL, "arch": "iunet"}
    lean = randomised(build_model({**settings, "memory_efficient": True}))
    plain = build_model({**settings, "memory_efficient": False})
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(batch, 1, 16, 16, 8, generator=torch.Generator().manual_seed(1))
    for model in (lean, plain):
        (model(x)[0] ** 2).mean().backward()
    for (name, a), b in zip(lean.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    splits = [c._fn.split_location for c in lean.core.concat_layers]
    assert sorted(released) == sorted(splits * 2)  # output and gradient, each concatenation
    widths = lean.core.channels[: len(splits)]
    assert sorted(filled) == sorted(list(widths) * 2)  # input and gradient, each split


@pytest.mark.parametrize("shape", [(1, 4, 16, 5, 4), (2, 6, 13, 3, 5)])
def test_lean_channel_mixing_forward_equals_iunets_convolution(shape):
    from iunets.layers import InvertibleChannelMixing3D

    from lungseg.nets.invertible import LeanChannelMixing

    mixing = randomised(InvertibleChannelMixing3D(shape[1]))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    expected = mixing(x)
    mixing.__class__ = LeanChannelMixing
    with torch.no_grad():  # memcnn's forward: the slab path
        torch.testing.assert_close(mixing(x), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mixing(x), expected)  # with autograd: iunets' own


def _lean_module(kind: str, onednn: bool):
    """One lean-wrapped iunets module (4 channels): a coupling or an orthogonal channel mixing,
    and an exact, plain-autograd copy."""
    import copy

    from iunets.layers import InvertibleChannelMixing3D, create_standard_module
    from memcnn import InvertibleModuleWrapper

    from lungseg.nets.cpu_convolution import use_onednn_convolutions
    from lungseg.nets.invertible import use_lean_backward

    torch.manual_seed(0)
    if kind == "coupling":
        module = randomised(create_standard_module(4, dim=3))
    else:
        module = randomised(InvertibleChannelMixing3D(4))
    if onednn:
        use_onednn_convolutions(module)
    plain = copy.deepcopy(module)
    lean = torch.nn.Sequential(InvertibleModuleWrapper(module, keep_input=False))
    assert use_lean_backward(lean) == 1
    return lean, plain


# How the loss reads the coupling's output y, and whether dL/dy may be overwritten as dL/dx
# (built in its storage) or must fall back to a new tensor.
LOSSES = {
    "owned": (lambda y, w, kept, other: (y * w).sum(), True),
    # channels-last w: dL/dy = w has its strides
    "non-contiguous": (
        lambda y, w, kept, other: (
            y * w.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)
        ).sum(),
        False,
    ),
    # AddBackward passes one gradient tensor to both inputs; the other input's backward (made
    # before y, so it runs after y's) still holds it while y's runs
    "shared by an addition": (lambda y, w, kept, other: ((y + other) * w).sum(), False),
    "kept by a hook": (
        lambda y, w, kept, other: (y.register_hook(kept.append), (y * w).sum())[1],
        False,
    ),
    # retain_grad stores a copy: dL/dy itself may still be overwritten
    "retained as .grad": (
        lambda y, w, kept, other: (y.retain_grad(), kept.append(y), (y * w).sum())[2],
        True,
    ),
}


@pytest.fixture
def owned_answers(monkeypatch) -> list[bool]:
    """What ``invertible._owned`` answers, call by call (a spy that counts its own frame)."""
    from lungseg.nets import invertible

    answers: list[bool] = []
    owned = invertible._owned

    def spy(grad, channels=None):  # no *args: a packed argument tuple is one more reference
        answers.append(owned(grad, channels))
        return answers[-1]

    monkeypatch.setattr(invertible, "_owned", spy)
    monkeypatch.setattr(invertible, "_ENGINE_REFS", invertible._ENGINE_REFS + 1)  # spy's frame
    return answers


@pytest.mark.parametrize("kind", ["coupling", "mixing"])
@pytest.mark.parametrize("onednn", [True, False], ids=["oneDNN slabs", "PyTorch conv"])
@pytest.mark.parametrize("case", list(LOSSES))
def test_lean_coupling_gradient_in_place_or_fallback(case, onednn, kind, owned_answers):
    """A lean coupling's or channel mixing's gradients equal plain autograd's whichever path
    dL/dx takes (built over dL/dy, or a new tensor)."""
    loss_of, in_place = LOSSES[case]
    owned_calls = owned_answers
    lean, plain = _lean_module(kind, onednn)
    x = torch.randn(1, 4, 6, 5, 4, generator=torch.Generator().manual_seed(1))
    w = torch.randn(1, 4, 6, 5, 4, generator=torch.Generator().manual_seed(2))
    x_lean, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    kept, leaf = [], torch.zeros_like(x, requires_grad=True)
    other = leaf * 1.0
    loss_of(lean(x_lean), w, kept, other).backward()
    (plain(x_plain) * w).sum().backward()
    torch.testing.assert_close(x_lean.grad, x_plain.grad, atol=1e-5, rtol=1e-4)
    for (name, a), b in zip(lean.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    if in_place is not None:
        assert owned_calls == [in_place]
    for seen in kept:  # what a hook or .grad holds is dL/dy, untouched by the backward
        torch.testing.assert_close(seen.grad if seen.requires_grad else seen, w)
    if leaf.grad is not None:  # the other input of the addition: dL/dy as well
        torch.testing.assert_close(leaf.grad, w)


@pytest.mark.parametrize("channels", [5, 6])
def test_lean_coupling_with_unequal_or_equal_halves_matches_plain_autograd(channels):
    """Unequal halves (odd channels) take the new-tensor forward and the rebuild-first
    backward; equal ones write y over x and run inverse and backward in one pass."""
    import copy

    from iunets.layers import create_standard_module
    from memcnn import InvertibleModuleWrapper

    from lungseg.nets.cpu_convolution import use_onednn_convolutions
    from lungseg.nets.invertible import use_lean_backward

    torch.manual_seed(0)
    module = randomised(create_standard_module(channels, dim=3))
    use_onednn_convolutions(module)
    plain = copy.deepcopy(module)
    lean = torch.nn.Sequential(InvertibleModuleWrapper(module, keep_input=False))
    assert use_lean_backward(lean) == 1
    x = torch.randn(1, channels, 9, 5, 4, generator=torch.Generator().manual_seed(1))
    w = torch.randn(1, channels, 9, 5, 4, generator=torch.Generator().manual_seed(2))
    x_lean, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_lean = lean(x_lean * 1.0)  # memcnn frees (or overwrites) its input: feed it a product
    y_plain = plain(x_plain)
    torch.testing.assert_close(y_lean, y_plain, atol=1e-5, rtol=1e-4)
    (y_lean * w).sum().backward()
    (y_plain * w).sum().backward()
    torch.testing.assert_close(x_lean.grad, x_plain.grad, atol=1e-5, rtol=1e-4)
    for (name, a), b in zip(lean.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("case", list(LOSSES))
def test_lean_channel_split_frees_only_gradients_nothing_else_holds(case, owned_answers):
    """The split's backward frees each incoming gradient once copied only where ``_owned``."""
    from iunets.layers import SplitChannels
    from memcnn import InvertibleModuleWrapper

    from lungseg.nets.invertible import use_lean_backward

    loss_of, owned = LOSSES[case]
    seen = owned_answers
    lean = torch.nn.Sequential(InvertibleModuleWrapper(SplitChannels(2), keep_input=False))
    assert use_lean_backward(lean) == 1
    x = torch.randn(1, 4, 6, 5, 4, generator=torch.Generator().manual_seed(1))
    w = torch.randn(1, 2, 6, 5, 4, generator=torch.Generator().manual_seed(2))
    x_lean = x.clone().requires_grad_()
    kept, leaf = [], torch.zeros_like(w, requires_grad=True)
    other = leaf * 1.0  # made before the split: its backward runs after the split's
    first, second = lean(x_lean)
    (loss_of(first, w, kept, other) + (second * 3.0).sum()).backward()
    expected = torch.cat([w, torch.full_like(w, 3.0)], dim=1)
    torch.testing.assert_close(x_lean.grad, expected)
    assert seen == [owned, True]  # (second * 3)'s gradient is a new tensor
    for held in kept:  # a hook's or .grad's copy of dL/d(first): still whole and unchanged
        torch.testing.assert_close(held.grad if held.requires_grad else held, w)
    if leaf.grad is not None:
        torch.testing.assert_close(leaf.grad, w)


@pytest.mark.parametrize("arch", ["unet", "iunet"])
def test_overfits_one_sphere(arch):
    torch.manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"))
    target = (((grid - 7.5) ** 2).sum(0) < 16).float()[None, None]
    image = target * 2 - 1 + 0.3 * torch.randn(target.shape)
    model = build_model({"arch": arch, "channels": 4, "levels": 2, "blocks_per_level": 1})
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(50):
        optimiser.zero_grad()
        loss = loss_fn(model(image)[0], target)
        loss.backward()
        optimiser.step()
    prediction = (model(image)[0] > 0).float()
    dice = 2 * (prediction * target).sum() / (prediction.sum() + target.sum())
    assert dice > 0.9


@pytest.mark.parametrize(
    ("lean_memory", "expected"), [(True, "LeanInvertibleWrapper"), (False, None)]
)
def test_lean_memory_swaps_every_memcnn_wrapper(lean_memory, expected):
    model = build_model({**SMALL, "arch": "iunet", "lean_memory": lean_memory})
    wrappers = {type(m).__name__ for m in model.core.modules() if hasattr(m, "keep_input")}
    if expected:
        assert wrappers == {expected}
    else:
        assert wrappers == {"InvertibleModuleWrapper"}


@pytest.mark.parametrize("arch", ["unet", "iunet"])
def test_onednn_convolutions_give_pytorchs_outputs_and_gradients(arch):
    """Every Conv3d above 1x1x1 runs on oneDNN on CPU; PyTorch alone would pick slow_conv3d here."""
    from torch.profiler import ProfilerActivity, profile

    from lungseg.nets.cpu_convolution import OneDNNConv3d

    settings = {**SMALL, "arch": arch, "deep_supervision": True}
    fast = randomised(build_model(settings))
    convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(type(m) is OneDNNConv3d for m in convs)
    reference = build_model(settings)
    for module in reference.modules():
        if type(module) is OneDNNConv3d:
            module.__class__ = torch.nn.Conv3d  # PyTorch's own backend choice
    reference.load_state_dict(fast.state_dict())  # same keys: checkpoints stay compatible
    x = torch.randn(1, 1, 16, 16, 8, generator=torch.Generator().manual_seed(2))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as trace:
        fast_out = fast(x)
    events = trace.key_averages(group_by_input_shape=True)
    onednn = sum(e.count for e in events if e.key == "aten::mkldnn_convolution")
    # One oneDNN call per Conv3d above 1x1x1 (1x1x1 heads keep PyTorch's faster matrix product;
    # iunets' functional resampling convolutions keep PyTorch's choice, which may be oneDNN).
    assert onednn >= sum(m.kernel_size != (1, 1, 1) for m in convs)
    if arch == "unet":
        slow_weights = [e.input_shapes[1] for e in events if e.key == "aten::slow_conv3d_forward"]
        assert all(shape[2:] == [1, 1, 1] for shape in slow_weights), slow_weights
    reference_out = reference(x)
    for a, b in zip(fast_out, reference_out, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for out in (fast_out, reference_out):
        sum((o**2).mean() for o in out).backward()
    for (name, a), b in zip(fast.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
