"""A leaner memcnn backward for the iUNet: same gradients, fewer full-resolution tensors alive.

memcnn 1.5.2's ``InvertibleCheckpointFunction.backward`` rebuilds a module's input from its
output, recomputes the module with autograd and differentiates it. Two things keep more memory
alive than the maths needs, at the moment the backward pass peaks:

* the module's output stays allocated until its backward returns, although once the input has
  been rebuilt nothing reads it again (its consumers' backward passes ran before);
* it stores every gradient as ``.grad`` on the input and output tensors ("mimic backwards"),
  which keeps those gradient tensors alive for as long as the tensors are referenced.

``LeanInvertibleFunction`` frees the output right after rebuilding the input and stores no
``.grad``; everything else, including the forward pass, is memcnn's.
"""

from __future__ import annotations

import torch
from iunets.layers import StandardAdditiveCoupling
from memcnn.models.revop import InvertibleCheckpointFunction, InvertibleModuleWrapper
from torch import nn


def additive_coupling_backward(
    coupling: StandardAdditiveCoupling,
    x: torch.Tensor,
    y: torch.Tensor,
    grad_y: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor | None, ...]:
    """Rebuild ``x`` into its own tensor, free ``y``, return the gradients of x and weights.

    iunets' coupling is ``y = (y1, y2) = (x2, x1 + F(x2))``, so ``x2 = y1``, ``x1 = y2 - F(y1)``
    and, with ``g`` the incoming gradient, ``dx1 = g2`` and ``dx2 = g1 + J_F(x2)^T g2``. Only
    ``F`` is recomputed with autograd; the concatenation and sum, whose gradients are these
    slices, are not (memcnn recomputes and differentiates the whole coupling). ``F`` runs twice,
    as in memcnn (once to invert, once with autograd).
    """
    split = y.shape[1] - coupling.channel_split_pos  # channels of y1 = x2
    with torch.no_grad():
        y1 = y[:, :split]
        x.set_(torch.cat([y[:, split:] - coupling.F(y1), y1], dim=1))
        del y1
    y.untyped_storage().resize_(0)  # its consumers' backward passes ran already
    with torch.enable_grad():
        x2 = x[:, coupling.channel_split_pos :].detach().requires_grad_()
        f = coupling.F(x2)
    grads = torch.autograd.grad(f, (x2, *weights), grad_y[:, split:], allow_unused=True)
    del f
    with torch.no_grad():
        grad_x = torch.cat([grad_y[:, split:], grad_y[:, :split] + grads[0]], dim=1)
    return (grad_x, *grads[1:])


class LeanInvertibleFunction(InvertibleCheckpointFunction):
    """memcnn's invertible checkpoint with a backward that frees what it no longer needs."""

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
                swapped += 1
    return swapped
