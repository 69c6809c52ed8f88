"""Segmentation networks: a classic 3D U-Net (the memory baseline) and an invertible U-Net.

``build_model(settings)`` is the only entry point other stages use. Every model maps a CT crop
``(B, 1, D, H, W)`` float32 to a **list** of logits: full resolution first, then (with
``deep_supervision``) one per coarser decoder scale, finest to coarsest. A model with ``levels``
resolution levels therefore returns ``levels`` tensors with deep supervision, else one; scale ``s``
has spatial shape ``(D, H, W) / 2**s``.

The iUNet variant is ``lift -> iUNet -> head``: a 3x3x3 convolution lifts the one CT channel to
``channels``, the invertible U-Net of the ``iunets`` package (PyPI 0.1 API, memcnn underneath)
keeps that width at full resolution, and a 1x1x1 convolution reads the logits out. Multi-scale
heads tap the iUNet decoder after the invertible blocks of each level (the same tensors iunets'
own ``decode`` passes on to the next upsampling), so the invertible core itself is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from lungseg.core.settings import schema_defaults
from lungseg.nets.cpu_convolution import use_onednn_convolutions
from lungseg.nets.versions import lean_memory_enabled

ARCHS = ("unet", "iunet")


@dataclass(frozen=True)
class ModelSettings:
    """The model keys of a variant's settings (other keys, e.g. training ones, are ignored).

    A key left out takes the schema's default (``training`` section of the config schema).
    ``lean_memory`` (auto, true, false) is resolved by :func:`lean_memory_enabled` when the
    model is built.
    """

    arch: str
    channels: int
    levels: int
    blocks_per_level: int
    deep_supervision: bool
    memory_efficient: bool
    lean_memory: str | bool

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> ModelSettings:
        known = {f.name for f in fields(cls)}
        merged = {**schema_defaults("training"), **settings}
        chosen = cls(**{k: v for k, v in merged.items() if k in known})
        chosen.validate()
        return chosen

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown model arch {self.arch!r}; expected one of {ARCHS}")
        for name, least in (("channels", 1), ("levels", 2), ("blocks_per_level", 1)):
            if int(getattr(self, name)) < least:
                raise ValueError(
                    f"model setting {name} must be >= {least}, got {getattr(self, name)}"
                )
        if self.arch == "iunet" and self.channels < 2:
            raise ValueError("iunet needs channels >= 2 (its couplings split the channels)")


def build_model(settings: dict[str, Any]) -> nn.Module:
    """The network a variant's settings describe (keys: see :class:`ModelSettings`)."""
    chosen = ModelSettings.from_dict(settings)
    if chosen.arch == "unet":
        model: nn.Module = UNet3D(
            channels=chosen.channels,
            levels=chosen.levels,
            blocks_per_level=chosen.blocks_per_level,
            deep_supervision=chosen.deep_supervision,
        )
    else:
        model = InvertibleUNet3D(
            channels=chosen.channels,
            levels=chosen.levels,
            blocks_per_level=chosen.blocks_per_level,
            deep_supervision=chosen.deep_supervision,
            memory_efficient=chosen.memory_efficient,
            lean_memory=chosen.memory_efficient and lean_memory_enabled(chosen.lean_memory),
        )
    use_onednn_convolutions(model)
    return model


def check_input(x: torch.Tensor, levels: int) -> None:
    """Raise a clear error unless ``x`` is ``(B, 1, D, H, W)``, sizes divisible by 2**(levels-1)."""
    if x.dim() != 5 or x.shape[1] != 1:
        raise ValueError(f"expected input of shape (B, 1, D, H, W), got {tuple(x.shape)}")
    factor = 2 ** (levels - 1)
    spatial = tuple(x.shape[2:])
    if any(size % factor for size in spatial):
        raise ValueError(
            f"input spatial shape {spatial} is not divisible by 2**(levels-1) = {factor} "
            f"(levels={levels}); crop or pad the volume to a multiple of {factor}"
        )


class ConvBlock(nn.Sequential):
    """Conv 3x3x3 -> instance norm -> leaky ReLU (nnU-Net's basic block)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


def conv_stack(in_channels: int, out_channels: int, blocks: int) -> nn.Sequential:
    layers = [ConvBlock(in_channels, out_channels)]
    layers += [ConvBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class UNet3D(nn.Module):
    """Classic 3D U-Net: width ``channels * 2**level``, ``blocks_per_level`` conv blocks a side."""

    def __init__(self, channels: int, levels: int, blocks_per_level: int, deep_supervision: bool):
        super().__init__()
        self.levels = levels
        self.deep_supervision = deep_supervision
        widths = [channels * 2**level for level in range(levels)]
        self.encoders = nn.ModuleList()
        for level, width in enumerate(widths):
            previous = 1 if level == 0 else widths[level - 1]
            self.encoders.append(conv_stack(previous, width, blocks_per_level))
        self.pool = nn.MaxPool3d(2)
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose3d(widths[level + 1], widths[level], 2, stride=2)
            for level in range(levels - 1)
        )
        self.decoders = nn.ModuleList(
            conv_stack(2 * widths[level], widths[level], blocks_per_level)
            for level in range(levels - 1)
        )
        head_levels = range(levels) if deep_supervision else range(1)
        self.heads = nn.ModuleList(nn.Conv3d(widths[level], 1, 1) for level in head_levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.levels)
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else self.pool(x))
            skips.append(x)
        # Decoder features per level; the bottleneck is the coarsest decoder scale.
        features: list[torch.Tensor] = [x]
        for level in range(self.levels - 2, -1, -1):
            x = self.upsamplers[level](x)
            x = self.decoders[level](torch.cat([skips[level], x], dim=1))
            features.insert(0, x)
        return [head(features[level]) for level, head in enumerate(self.heads)]


def cayley_kernel_matrix(weight: torch.Tensor, **_kwargs: Any) -> torch.Tensor:
    """Cayley transform ``(I + A)^-1 (I - A)`` of the skew part ``A`` of ``weight``, autograd-exact.

    iunets 0.1 computes the same values, but its hand-written backward (``iunets.cayley``) returns
    a wrong gradient (it fails ``torch.autograd.gradcheck``), which makes the learnable orthogonal
    resampling and channel mixing drift; here autograd differentiates ``torch.linalg.solve``.
    """
    skew = weight - weight.transpose(-1, -2)
    eye = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device)
    return torch.linalg.solve(eye + skew, eye - skew)


def use_exact_cayley_gradient(core: nn.Module) -> None:
    """Point every Cayley-parametrised layer of an iUNet at :func:`cayley_kernel_matrix`."""
    from iunets.layers import OrthogonalChannelMixing, OrthogonalResamplingLayer

    methods = {core.resampling_method, core.channel_mixing_method}
    if methods != {"cayley"}:
        raise ValueError(f"expected Cayley-parametrised iUNet layers, got {methods}")
    for module in core.modules():
        if isinstance(module, OrthogonalResamplingLayer | OrthogonalChannelMixing):
            module.__calculate_kernel_matrix__ = cayley_kernel_matrix


def reconstruct_resampling_inputs(core: nn.Module, keep_upsampling_input: bool) -> None:
    """Let memcnn reconstruct the inputs of iUNet's learnable up- and downsampling layers.

    Stock iunets 0.1 runs learnable resampling with plain autograd, which keeps each layer's
    input alive from the forward to the backward pass (a quarter of a full-resolution
    activation at level 0, less below). The layers are orthogonal convolutions, exactly
    invertible, so memcnn can free those inputs and rebuild them in the backward pass.
    """
    from lungseg.nets.invertible import LeanInvertibleWrapper

    for layers, keep_input in (
        (core.downsampling_layers, False),
        (core.upsampling_layers, keep_upsampling_input),
    ):
        for index, wrapper in enumerate(layers):
            layers[index] = LeanInvertibleWrapper(wrapper._fn, keep_input=keep_input)


class InvertibleUNet3D(nn.Module):
    """Lifting conv -> iunets ``iUNet`` (memory-efficient backprop) -> output head(s).

    ``lean_memory`` (with ``memory_efficient``) adds lungseg's savings on top of stock iunets:
    resampling layers reconstructed instead of stored, and memcnn's backward replaced by
    :class:`lungseg.nets.invertible.LeanInvertibleFunction`. Gradients are unchanged (tested).
    """

    def __init__(
        self,
        channels: int,
        levels: int,
        blocks_per_level: int,
        deep_supervision: bool,
        memory_efficient: bool,
        lean_memory: bool,
    ):
        super().__init__()
        # Imported here: iunets and memcnn are slow to import and only iUNets need them.
        from iunets import iUNet

        from lungseg.nets.invertible import use_lean_backward

        self.levels = levels
        self.deep_supervision = deep_supervision
        self.lift = nn.Conv3d(1, channels, 3, padding=1)
        self.core = iUNet(
            in_channels=channels,
            architecture=[blocks_per_level] * levels,
            dim=3,
            disable_custom_gradient=not memory_efficient,
            padding_mode=None,  # sizes are validated instead: padding would cost memory
            verbose=0,
        )
        use_exact_cayley_gradient(self.core)
        if memory_efficient and lean_memory:
            # Multi-scale heads read the input of each upsampling layer: that one must stay.
            reconstruct_resampling_inputs(self.core, keep_upsampling_input=deep_supervision)
            use_lean_backward(self.core)
        head_levels = range(levels) if deep_supervision else range(1)
        self.heads = nn.ModuleList(
            nn.Conv3d(self.core.channels[level], 1, 1) for level in head_levels
        )

    def decode_scales(self, codes: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """iunets' ``iUNet.decode``, also returning every level's decoder output (finest first)."""
        core = self.core
        codes_left = list(codes)
        x = codes_left.pop()
        features: list[torch.Tensor] = []
        for level in range(core.num_levels - 1, -1, -1):
            if level < core.num_levels - 1:
                x = core.upsampling_layers[level](x)
                x = core.concat_layers[level](codes_left.pop(), x)
            for module in core.decoder_modules[level]:
                x = module(x)
            features.insert(0, x)
        return features

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.levels)
        codes = self.core.encode(self.lift(x))
        features = self.decode_scales(codes)
        return [head(features[level]) for level, head in enumerate(self.heads)]
