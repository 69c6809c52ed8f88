"""Settings of one model variant: ``training`` merged with the variant's overrides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lungseg.core.errors import SettingsError
from lungseg.core.settings import StageSettings


@dataclass(frozen=True)
class VariantSettings(StageSettings):
    """Rule ``train``: every key of the ``training`` section but ``resources``.

    The network keys are read by :class:`lungseg.nets.models.ModelSettings`, the loss keys by
    :func:`lungseg.training.losses.build_loss`, the rest by the trainer.
    """

    SECTIONS = ("training",)
    arch: str
    channels: int
    levels: int
    blocks_per_level: int
    deep_supervision: bool
    memory_efficient: bool
    lean_memory: str | bool
    loss: str
    scale_weights: str | tuple[float, ...]
    target_downsampling: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    hu_min: float
    hu_max: float
    flip: bool
    intensity_jitter: float
    amp: bool

    def check(self) -> None:
        if self.hu_min >= self.hu_max:
            raise SettingsError(
                f"training.hu_min ({self.hu_min}) must be below training.hu_max ({self.hu_max})"
            )
        if self.arch == "iunet" and self.channels < 2:
            raise SettingsError(
                "training.channels must be >= 2 for arch iunet (couplings split it)"
            )
        weights = self.scale_weights
        if isinstance(weights, tuple) and self.deep_supervision and len(weights) != self.levels:
            raise SettingsError(
                f"training.scale_weights: {len(weights)} weights for {self.levels} scales "
                "(training.levels)"
            )

    @classmethod
    def check_config(cls, config: Mapping[str, Any]) -> None:
        if not config.get("models"):
            raise SettingsError("models: no model variant configured")
        for name in config["models"]:
            try:
                cls.from_config(variant_config(config, name))
            except SettingsError as error:
                raise SettingsError(f"models.{name}: {error}") from None

    def divides(self, size: tuple[int, ...]) -> bool:
        """Whether a volume of ``size`` voxels passes the network's ``levels - 1`` halvings."""
        return all(n % 2 ** (self.levels - 1) == 0 for n in size)


def variant_config(config: Mapping[str, Any], model: str) -> dict:
    """A variant's merged settings: ``training`` (less resources), then ``models[model]``.

    Null or unset keys of a variant inherit the training value. These are the train job's
    params, so editing one variant reruns only that variant's training.
    """
    shared = {k: v for k, v in (config.get("training") or {}).items() if k != "resources"}
    overrides = config["models"][model] or {}
    return {**shared, **{k: v for k, v in overrides.items() if v is not None}}
