"""ConvNeXt configurations: :class:`ConvNeXtConfig` and the released variants, :data:`VARIANTS`.

Kept apart from the model file (:mod:`candidates.convnext.convnext`) because checkpoint
recognition reads the variants and must not import torch (``python -m harness inspect`` starts
in well under a second without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from harness.checks import check_int, check_number, check_type, check_value

__all__ = ["ConvNeXtConfig", "VARIANTS", "check_drop_rate"]


def check_drop_rate(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1): a drop rate of 1 would zero every residual branch."""
    expected = "a number in [0, 1)"
    check_type(name, value, (int, float), what=expected)
    return float(check_value(name, value, 0 <= value < 1, expected=expected))


@dataclass(frozen=True)
class ConvNeXtConfig:
    """Shape and options of a ConvNeXt; validated on construction.

    Attributes:
        depths: blocks per stage (4 stages).
        dims: channels per stage (4 stages).
        drop_path_rate: stochastic-depth rate of the last block; it rises linearly from 0 over
            all blocks of the network.
        layer_scale_init_value: initial value of every block's per-channel ``gamma``.
        in_chans: input image channels.
        num_classes: classifier outputs.
        use_cifar_stem: 3x3 stride-1 stem for 32x32 images instead of the 4x4 stride-4 patchify.
    """

    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    drop_path_rate: float = 0.0
    layer_scale_init_value: float = 1e-6
    in_chans: int = 3
    num_classes: int = 1000
    use_cifar_stem: bool = False

    def __post_init__(self) -> None:
        for name in ("depths", "dims"):
            object.__setattr__(self, name, _per_stage(f"ConvNeXtConfig.{name}", getattr(self, name)))
        for name in ("in_chans", "num_classes"):
            check_int(f"ConvNeXtConfig.{name}", getattr(self, name), minimum=1)
        object.__setattr__(self, "drop_path_rate",
                           check_drop_rate("ConvNeXtConfig.drop_path_rate", self.drop_path_rate))
        # a float, so that gamma (filled with it) is a floating parameter even when an int was given
        object.__setattr__(self, "layer_scale_init_value", check_number(
            "ConvNeXtConfig.layer_scale_init_value", self.layer_scale_init_value, above=0))
        check_type("ConvNeXtConfig.use_cifar_stem", self.use_cifar_stem, bool)

    @property
    def min_input_size(self) -> int:
        """Smallest height/width that survives the stem and the three 2x downsamples."""
        return 8 if self.use_cifar_stem else 32

    def drop_path_rates(self) -> list[list[float]]:
        """Per stage, per block: rates rising linearly from 0 to ``drop_path_rate`` over all blocks."""
        last = sum(self.depths) - 1
        rates = [self.drop_path_rate * i / last if last else 0.0 for i in range(last + 1)]
        starts = [sum(self.depths[:i]) for i in range(len(self.depths))]
        return [rates[start:start + depth] for start, depth in zip(starts, self.depths)]


def _per_stage(name: str, value: Any) -> tuple[int, ...]:
    """A tuple of 4 positive ints (one per stage) from a tuple or list."""
    expected = "a tuple of 4 positive ints (one per stage)"
    check_type(name, value, (tuple, list), what=expected)
    check_value(name, value, len(value) == 4, expected=expected)
    return tuple(check_int(f"{name}[{i}]", v, minimum=1) for i, v in enumerate(value))


# Paper Table / timm defaults; drop_path_rate is the paper's ImageNet-1K training value.
VARIANTS: Mapping[str, ConvNeXtConfig] = MappingProxyType({
    "tiny": ConvNeXtConfig(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), drop_path_rate=0.1),
    "small": ConvNeXtConfig(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), drop_path_rate=0.4),
    "base": ConvNeXtConfig(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), drop_path_rate=0.5),
    "large": ConvNeXtConfig(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), drop_path_rate=0.5),
    "xlarge": ConvNeXtConfig(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048), drop_path_rate=0.5),
})
