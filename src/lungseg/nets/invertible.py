"""A leaner memcnn backward for the iUNet: same gradients, fewer full-resolution tensors alive.

memcnn 1.5.2's ``InvertibleCheckpointFunction.backward`` rebuilds a module's input from its
output, recomputes the module with autograd and differentiates it. Two things keep more memory
alive than the maths needs, at the moment the backward pass peaks:

* the module's output stays allocated until its backward returns, although once the input has
  been rebuilt nothing reads it again (its consumers' backward passes ran before);
* it stores every gradient as ``.grad`` on the input and output tensors ("mimic backwards"),
  which keeps those gradient tensors alive for as long as the tensors are referenced.

``LeanInvertibleFunction`` frees the output right after rebuilding the input and stores no
``.grad``; everything else, including the forward pass, is memcnn's. The backward passes of
iunets' couplings, channel mixings, splits and concatenations are written out by hand below,
each to keep as few full-resolution tensors alive at once as it can (docs/decisions.md).
"""

from __future__ import annotations

import sys

import torch
from iunets.layers import (
    ConcatenateChannels,
    InvertibleChannelMixing3D,
    InvertibleDownsampling3D,
    InvertibleUpsampling3D,
    SplitChannels,
    StandardAdditiveCoupling,
    StandardBlock,
)
from memcnn.models.revop import InvertibleCheckpointFunction, InvertibleModuleWrapper
from torch import nn

from lungseg.nets.coupling_block import block_backward, standard_layers
from lungseg.nets.lean_layers import (
    LeanAdditiveCoupling,
    LeanChannelMixing,
    _mix_in_place,
    _rebuild_input_in_place,
    _swap_halves,
    resampling_backward,
)
from lungseg.nets.pages import _alone, _head_of, _whole, release_channels

#: ``sys.getrefcount`` of a gradient in ``_owned`` when only the autograd engine holds it (its
#: argument tuples, the callers' locals, ``getrefcount``'s own): measured with torch 2.13 and
#: tested (tests/test_models.py); a hook that kept the gradient adds one.
_ENGINE_REFS = 7


def _owned(grad: torch.Tensor, channels: int | None = None) -> bool:
    """True when nothing but this backward can see ``grad``, so it may be overwritten.

    With ``channels``, ``grad`` may also be the head (its first channels) of a contiguous
    tensor of that many channels, the whole storage nothing else can see either
    (:func:`_head_of`)."""
    # A gradient made as ``.view`` of a product has that product as ``_base``: one more
    # TensorImpl on the storage, harmless while nothing else holds the base either.
    base = grad._base
    return (
        not grad.requires_grad  # not part of a double-backward graph
        and (_whole(grad) or (channels is not None and _head_of(grad, channels)))
        # no other view (+1: the temporary storage object made here)
        and torch._C._storage_Use_Count(grad.untyped_storage()._cdata) == 2 + (base is not None)
        and (base is None or (base._use_count() == 2 and sys.getrefcount(base) <= 3))
        # no other C++ holder: an engine buffer of another input (``a + b`` passes one gradient
        # to both), a ``.grad`` (retain_grad)
        and grad._use_count() == 1
        and sys.getrefcount(grad) <= _ENGINE_REFS  # no Python holder (a hook that stored it)
    )


def additive_coupling_backward(
    coupling: StandardAdditiveCoupling,
    x: torch.Tensor,
    y: torch.Tensor,
    grad_y: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor | None, ...]:
    """Rebuild ``x`` in ``y``'s storage, return the gradients of x and weights.

    iunets' coupling is ``y = (y1, y2) = (x2, x1 + F(x2))``, so ``x2 = y1``, ``x1 = y2 - F(y1)``
    and, with ``g`` the incoming gradient, ``dx1 = g2`` and ``dx2 = g1 + J_F(x2)^T g2``. Only
    ``F`` is differentiated (memcnn recomputes and differentiates the whole coupling). ``y``
    is not read again (its consumers' backward passes ran already), so ``x`` is rebuilt in
    place of it. Where nothing else can see ``g`` (``_owned``) and the halves are equal, ``dx``
    is built in ``g``'s storage, and F's inverse and backward run in one pass over depth slabs
    (:func:`lungseg.nets.coupling_block.block_backward`): ``y2 -= F(y1)``, ``g1 += J_F^T g2``,
    then both tensors' halves swapped slab by slab. Otherwise the inverse comes first and
    ``J_F^T g2`` is a new tensor and ``dx`` another.
    """
    split = y.shape[1] - coupling.channel_split_pos  # channels of y1 = x2
    in_place = split == coupling.channel_split_pos and _owned(grad_y)  # before any view of it
    with torch.no_grad():
        if in_place and y.is_contiguous() and standard_layers(coupling.F) is not None:
            staged = block_backward(
                coupling.F, y[:, :split], grad_y[:, split:], grad_y[:, :split], y[:, split:]
            )
            _swap_halves(y)
            x.set_(y)
            _swap_halves(grad_y)
            return (grad_y, *(staged.get(id(w)) for w in weights))
        rebuilt = _rebuild_input_in_place(coupling, y)
        x.set_(rebuilt)
        if rebuilt.untyped_storage().data_ptr() != y.untyped_storage().data_ptr():
            y.untyped_storage().resize_(0)
        del rebuilt
    x2 = x[:, coupling.channel_split_pos :]
    grad_f = grad_y[:, split:]
    into = grad_y[:, :split] if in_place else torch.zeros_like(x2)  # g1, or J_F^T g2 alone
    staged = (
        block_backward(coupling.F, x2, grad_f, into)
        if standard_layers(coupling.F) is not None
        else None
    )
    if staged is not None:
        weight_grads = tuple(staged.get(id(w)) for w in weights)
    else:
        with torch.enable_grad():
            x2 = x2.detach().requires_grad_()
            f = coupling.F(x2)
        if isinstance(coupling.F, StandardBlock) and isinstance(coupling.F.F[-1], nn.GroupNorm):
            f.untyped_storage().resize_(0)  # group norm's backward reads its input, not output
        grad_x2, *weight_grads = torch.autograd.grad(f, (x2, *weights), grad_f, allow_unused=True)
        del f
        with torch.no_grad():
            into.add_(grad_x2)
        del grad_x2
    with torch.no_grad():
        if in_place:  # grad_y is (g1 + J_F^T g2, g2): swap the halves
            _swap_halves(grad_y)
            return (grad_y, *weight_grads)
        grad_x = torch.empty_like(grad_y, memory_format=torch.contiguous_format)
        grad_x[:, : coupling.channel_split_pos].copy_(grad_f)
        torch.add(grad_y[:, :split], into, out=grad_x[:, coupling.channel_split_pos :])
    return (grad_x, *weight_grads)


def channel_mixing_backward(
    mixing: InvertibleChannelMixing3D,
    x: torch.Tensor,
    y: torch.Tensor,
    grad_y: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor | None, ...]:
    """The orthogonal 1x1x1 channel mixing ``y = W x``, differentiated by hand.

    ``x = W^T y`` is rebuilt in ``y``'s storage (``y`` is not read again), ``dW = g x^T`` is
    summed over the voxels, then ``dx = W^T g`` is written over ``g`` when nothing else can see
    it (``_owned``; else a new tensor), both products a depth slab at a time; autograd then
    takes ``dW`` back to the Cayley parameters (a C x C problem). memcnn's generic path
    recomputes ``W x`` with autograd and keeps it alive with its gradients; a whole ``W^T g``
    beside ``g`` was the third-highest peak of the iUNet's step (docs/decisions.md).
    """
    with torch.no_grad():
        transposed = mixing.kernel_matrix.T  # W^T
        in_place = _owned(grad_y)  # before any view of it
        if y.is_contiguous():
            _mix_in_place(transposed, y)
            x.set_(y)
        else:
            x.set_(torch.matmul(transposed, y.flatten(2)).view(y.shape))
            y.untyped_storage().resize_(0)
        # per sample a (C, V) x (V, C) product: BLAS reads the transposed view without a copy
        grad_matrix = sum(g.flatten(1) @ v.flatten(1).T for g, v in zip(grad_y, x, strict=True))
        if in_place:
            _mix_in_place(transposed, grad_y)
            grad_x = grad_y
        else:
            grad_x = torch.matmul(transposed, grad_y.flatten(2)).view(grad_y.shape)
    with torch.enable_grad():
        matrix = mixing.kernel_matrix
    grads = torch.autograd.grad(matrix, weights, grad_matrix, allow_unused=True)
    return (grad_x, *grads)


def split_channels_backward(
    inputs: tuple[torch.Tensor, ...],
    outputs: tuple[torch.Tensor, ...],
    grad_outputs: tuple[torch.Tensor | None, ...],
) -> tuple[torch.Tensor]:
    """``SplitChannels`` (two copies of channel slices): the input rebuilt and the gradient
    concatenated directly; memcnn's path also recomputes the copies with autograd.

    Where the first part is still the head of its whole tensor (the decoder's concatenation
    left it there, :func:`concat_channels_backward`) the second is copied into the rest of it:
    nothing new is allocated. Otherwise both are filled part by part, each part freed once
    copied (an output always; a gradient when nothing else can see it, ``_owned``): a new page
    is touched only as an old one goes (docs/decisions.md).
    """
    (x,) = inputs
    channels = sum(o.shape[1] for o in outputs)
    with torch.no_grad():
        if len(outputs) == 2 and _alone(outputs[0]) and _head_of(outputs[0], channels):
            x.set_(_fill_tail(outputs[0], outputs[1], channels, free=True))
        else:
            x.set_(_concatenate_freeing(list(outputs), [True] * len(outputs)))
        # Before anything else holds the gradients, and not through zip (whose cached result
        # tuple would hold one more reference): ``_owned`` counts them.
        owned = [g is None or _owned(g, channels) for g in grad_outputs]
        parts = [
            torch.zeros_like(o) if g is None else g
            for o, g in zip(outputs, grad_outputs, strict=True)
        ]
        if len(parts) == 2 and owned[0] and _head_of(parts[0], channels):
            return (_fill_tail(parts[0], parts[1], channels, free=owned[1]),)
        return (_concatenate_freeing(parts, owned),)


def _fill_tail(head: torch.Tensor, tail: torch.Tensor, channels: int, free: bool) -> torch.Tensor:
    """The whole ``(N, channels, ...)`` tensor ``head`` is the start of, ``tail`` copied in."""
    whole = head.new_empty(0).set_(
        head.untyped_storage(), 0, (head.shape[0], channels, *head.shape[2:])
    )
    whole[:, head.shape[1] :].copy_(tail)
    if free:
        tail.untyped_storage().resize_(0)
    return whole


def _concatenate_freeing(parts: list[torch.Tensor], free: list[bool]) -> torch.Tensor:
    """``torch.cat(parts, dim=1)``, each part's storage freed after its copy where ``free``."""
    channels = sum(part.shape[1] for part in parts)
    whole = parts[0].new_empty((parts[0].shape[0], channels, *parts[0].shape[2:]))
    start = 0
    for part, drop in zip(parts, free, strict=True):
        whole[:, start : start + part.shape[1]].copy_(part)
        start += part.shape[1]
        if drop:
            part.untyped_storage().resize_(0)
    return whole


def concat_channels_backward(
    concat: ConcatenateChannels,
    inputs: tuple[torch.Tensor, ...],
    outputs: tuple[torch.Tensor, ...],
    grad_outputs: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ConcatenateChannels`` (the skip connection, then the upsampled part): inputs and
    their gradients as channel slices.

    The upsampled part, read at once by the upsampling's backward, is copied out. The skip
    part stays where it is, at the head of the output and of its gradient, while the lower
    levels' backward runs: the rest of each is handed back to the system
    (:mod:`lungseg.nets.pages`), and the encoder's split fills it in again
    (:func:`split_channels_backward`). Copying the skip out instead needs the whole tensor and
    the copy resident at once: at level 0 the step's peak. Where something else holds the
    output or gradient, both parts are copies (memcnn's views would keep the consumed part
    alive through the lower levels).
    """
    (y,), (grad_y,), split = outputs, grad_outputs, concat.split_location
    with torch.no_grad():
        skip, up = inputs
        up.set_(y[:, split:].clone())
        if _alone(y) and _whole(y):
            skip.set_(y[:, :split])
            release_channels(y, split)
        else:
            skip.set_(y[:, :split].clone())
            y.untyped_storage().resize_(0)
        grad_up = grad_y[:, split:].clone()
        if _owned(grad_y):
            release_channels(grad_y, split)
            return grad_y[:, :split], grad_up
        return grad_y[:, :split].clone(), grad_up


class LeanInvertibleFunction(InvertibleCheckpointFunction):
    """memcnn's invertible checkpoint with a backward that frees what it no longer needs, and
    a forward that lets a module write its output over its input."""

    @staticmethod
    def forward(ctx, fn, fn_inverse, keep_input, num_bwd_passes, preserve_rng_state, *args):
        # memcnn frees each input's storage after ``fn`` (keep_input False). An output written
        # over its input (LeanAdditiveCoupling) lives in that storage: memcnn runs as if the
        # input were kept, then frees only the inputs no output shares. Such an input holds
        # the output's values until its backward rebuilds it, as freed ones hold nothing.
        outputs = InvertibleCheckpointFunction.forward(
            ctx, fn, fn_inverse, True, num_bwd_passes, preserve_rng_state, *args
        )
        ctx.keep_input = keep_input
        if not keep_input:
            shared = {o.untyped_storage().data_ptr() for o in outputs}
            for element in ctx.inputs[0]:
                if element.untyped_storage().data_ptr() not in shared:
                    element.untyped_storage().resize_(0)
        return outputs

    @staticmethod
    def backward(ctx, *grad_outputs):
        if not ctx.outputs:
            raise RuntimeError("LeanInvertibleFunction: backward ran more often than expected")
        inputs = ctx.inputs.pop()
        outputs = ctx.outputs.pop()
        coupling = getattr(ctx.fn, "__self__", None)
        if (
            isinstance(coupling, StandardAdditiveCoupling)
            and ctx.fn == coupling.forward
            and not ctx.keep_input
        ):
            return (None,) * 6 + additive_coupling_backward(
                coupling, inputs[0], outputs[0], grad_outputs[0], ctx.weights
            )
        if not ctx.keep_input and coupling is not None and ctx.fn == coupling.forward:
            if type(coupling) in (InvertibleDownsampling3D, InvertibleUpsampling3D):
                return (None,) * 6 + resampling_backward(
                    coupling, inputs[0], outputs[0], grad_outputs[0], ctx.weights
                )
            if isinstance(coupling, InvertibleChannelMixing3D):
                return (None,) * 6 + channel_mixing_backward(
                    coupling, inputs[0], outputs[0], grad_outputs[0], ctx.weights
                )
            if type(coupling) is SplitChannels and not ctx.weights:
                return (None,) * 6 + split_channels_backward(inputs, outputs, grad_outputs)
            if type(coupling) is ConcatenateChannels and grad_outputs[0] is not None:
                return (None,) * 6 + concat_channels_backward(
                    coupling, inputs, outputs, grad_outputs
                )
        if not ctx.keep_input:
            with torch.no_grad():
                rebuilt = ctx.fn_inverse(*outputs)
                if not isinstance(rebuilt, tuple):
                    rebuilt = (rebuilt,)
                for original, value in zip(inputs, rebuilt, strict=True):
                    original.set_(value)
                del rebuilt
                for output in outputs:
                    # Consumers of this output ran their backward already: drop its storage.
                    if all(output.untyped_storage().data_ptr() != i.data_ptr() for i in inputs):
                        output.untyped_storage().resize_(0)
        with torch.enable_grad():
            detached = tuple(element.detach().requires_grad_() for element in inputs)
            recomputed = ctx.fn(*detached)
        if not isinstance(recomputed, tuple):
            recomputed = (recomputed,)
        gradients = torch.autograd.grad(recomputed, detached + ctx.weights, grad_outputs)
        return (None, None, None, None, None, None, *gradients)


class LeanInvertibleWrapper(InvertibleModuleWrapper):
    """``InvertibleModuleWrapper`` whose forward goes through :class:`LeanInvertibleFunction`."""

    def forward(self, *xin):
        if self.disable:
            return super().forward(*xin)
        weights = tuple(p for p in self._fn.parameters() if p.requires_grad)
        y = LeanInvertibleFunction.apply(
            self._fn.forward,
            self._fn.inverse,
            self.keep_input,
            self.num_bwd_passes,
            self.preserve_rng_state,
            len(xin),
            *(xin + weights),
        )
        return y[0] if isinstance(y, tuple) and len(y) == 1 else y


def use_lean_backward(module: nn.Module) -> int:
    """Swap every memcnn wrapper inside ``module`` for a lean one; returns how many."""
    swapped = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            # RNG-preserving wrappers need memcnn's RNG replay in backward: leave them.
            if type(child) is InvertibleModuleWrapper and not child.preserve_rng_state:
                lean = LeanInvertibleWrapper(
                    child._fn,
                    keep_input=child.keep_input,
                    keep_input_inverse=child.keep_input_inverse,
                    num_bwd_passes=child.num_bwd_passes,
                    disable=child.disable,
                )
                setattr(parent, name, lean)
                if type(child._fn) is StandardAdditiveCoupling:
                    child._fn.__class__ = LeanAdditiveCoupling  # same module, leaner forward
                elif type(child._fn) is InvertibleChannelMixing3D:
                    child._fn.__class__ = LeanChannelMixing
                swapped += 1
    return swapped
