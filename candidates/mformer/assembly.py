"""mFormerV1 from two checkpoints: the compatibility row of a ConvNeXt / RoPE-ViT pair, and the build.

Both checkpoints are recognized (:func:`candidates.recognize.inspect_state_dict`, either layout
of each family), converted to timm's layout by their family's ``convert`` module and joined by
:func:`candidates.mformer.convert.load_mformer_from_state_dicts`.

The compatibility table row: ConvNeXt stage dims, the width at the S2 juncture (``dims[2]``, after
stage 1 and the downsample that follows it), the RoPE-ViT input width (``embed_dim``) and the
verdict. Building an mFormer from an incompatible pair raises the same error
(:func:`candidates.mformer.check_juncture`).

The RoPE-ViT head count: the original RoPE-ViT layout does not store it, so :func:`build_mformer`
takes ``num_heads`` and refuses a count that was only assumed for dims that are no released
variant's (:func:`candidates.rope_vit.convert.heads_for_build`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from candidates.convnext import convert as convnext_convert
from candidates.convnext.config import ConvNeXtConfig
from candidates.io import load_state_dict, naming_file
from candidates.mformer.config import VARIANTS, MFormerConfig, check_juncture
from candidates.mformer.convert import LoadReport, load_mformer_from_state_dicts
from candidates.recognize import CheckpointInfo, inspect_state_dict
from candidates.rope_vit import convert as rope_vit_convert
from candidates.rope_vit.config import RopeViTConfig
from harness.checks import check_type, check_value

if TYPE_CHECKING:  # the compatibility row is computed without torch (python -m harness compat)
    import torch

    from candidates.mformer.mformer import MFormerV1

__all__ = ["CompatRow", "compat_row", "build_mformer"]


@dataclass
class CompatRow:
    """One row of the mFormerV1 compatibility table (which ConvNeXt and ViT checkpoints join)."""

    variant: str | None
    convnext_checkpoint: str | None
    convnext_dims: list[int]
    juncture_dim: int
    rope_vit_checkpoint: str | None
    rope_input_dim: int
    compatible: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        header = ("| Variant | ConvNeXt Checkpoint | ConvNeXt Stages (DIMS) | Output Dim @ S2 Juncture "
                  "| RoPE-ViT Checkpoint | RoPE Input Dim | Compatible? |")
        rule = "| :-- | :-- | :-- | :-- | :-- | :-- | :-- |"
        verdict = "Yes" if self.compatible else "No"
        row = (f"| {self.variant or '-'} | {self.convnext_checkpoint} | {self.convnext_dims} | {self.juncture_dim} "
               f"| {self.rope_vit_checkpoint} | {self.rope_input_dim} | {verdict} |")
        return "\n".join([header, rule, row])


def _require(info: CheckpointInfo, family: str, role: str) -> None:
    if info.family != family:
        raise ValueError(
            f"{role} checkpoint {info.path or ''} must be a {family} state dict, got family {info.family!r}; "
            f"pass the ConvNeXt checkpoint first and the RoPE-ViT checkpoint second"
        )


def _checkpoint(name: str, value: Any) -> str | None:
    """The path of a checkpoint given as a path, None for a state dict given as a mapping."""
    check_type(name, value, (str, os.PathLike, Mapping), what="a checkpoint path or a state dict")
    return str(value) if isinstance(value, (str, os.PathLike)) else None


def _mformer_variant(convnext: CheckpointInfo, rope: CheckpointInfo) -> str | None:
    """``mFormerV1_<name>`` of the variant made of exactly these two released checkpoints, else None."""
    for name, config in VARIANTS.items():
        vit = {"embed_dim": config.vit.embed_dim, "depth": config.vit.depth, "num_heads": config.vit.num_heads}
        if convnext.variant == config.convnext_name and rope.variant == rope_vit_convert.match_variant(vit):
            return f"mFormerV1_{name}"
    return None


def compat_row(convnext: CheckpointInfo, rope: CheckpointInfo) -> CompatRow:
    """The table row for a ConvNeXt / RoPE-ViT pair; ``error`` says why when incompatible."""
    _require(convnext, "convnext", "ConvNeXt")
    _require(rope, rope_vit_convert.FAMILY, "RoPE-ViT")
    dims = list(convnext.dims["dims"])
    check_value("ConvNeXt checkpoint dims", dims, len(dims) >= 3,
                expected="the widths of at least 3 stages (the S2 juncture is dims[2])")
    error = None
    try:
        check_juncture(tuple(dims), rope.dims["embed_dim"])
    except ValueError as exc:
        error = str(exc)
    return CompatRow(
        variant=_mformer_variant(convnext, rope),
        convnext_checkpoint=Path(convnext.path).name if convnext.path else convnext.variant,
        convnext_dims=dims,
        juncture_dim=dims[2],
        rope_vit_checkpoint=Path(rope.path).name if rope.path else rope.variant,
        rope_input_dim=rope.dims["embed_dim"],
        compatible=error is None,
        error=error,
    )


def build_mformer(
    convnext: str | os.PathLike | Mapping[str, torch.Tensor],
    rope_vit: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
) -> tuple[MFormerV1, LoadReport]:
    """An mFormerV1 shaped by and filled from a ConvNeXt and a RoPE-ViT checkpoint (either layout).

    ``num_heads`` is the RoPE-ViT head count; required for an original-layout checkpoint whose
    dims are not a released variant's (that layout does not store it), checked against the
    shapes otherwise.
    """
    cnx_path, vit_path = _checkpoint("convnext", convnext), _checkpoint("rope_vit", rope_vit)
    cnx_state = load_state_dict(convnext) if cnx_path else dict(convnext)
    vit_state = load_state_dict(rope_vit) if vit_path else dict(rope_vit)
    with naming_file(cnx_path):
        cnx_info = inspect_state_dict(cnx_state, path=cnx_path)
        _require(cnx_info, "convnext", "ConvNeXt")
    with naming_file(vit_path):
        vit_info = inspect_state_dict(vit_state, path=vit_path, num_heads=num_heads)
        _require(vit_info, rope_vit_convert.FAMILY, "RoPE-ViT")
    check_juncture(tuple(cnx_info.dims["dims"]), vit_info.dims["embed_dim"])
    heads = rope_vit_convert.heads_for_build(vit_info)
    cnx_state, _ = convnext_convert.to_timm_layout(cnx_state, cnx_info)
    vit_state, dropped = rope_vit_convert.to_timm_layout(vit_state, vit_info)
    d, v = cnx_info.dims, vit_info.dims
    config = MFormerConfig(
        convnext=ConvNeXtConfig(depths=tuple(max(n, 1) for n in d["depths"]), dims=tuple(d["dims"])),
        vit=RopeViTConfig(
            embed_dim=v["embed_dim"], depth=v["depth"], num_heads=heads, num_classes=v.get("num_classes", 0),
            mlp_ratio=v.get("mlp_dim", 4 * v["embed_dim"]) / v["embed_dim"],
        ),
        convnext_name=cnx_info.variant or "convnext", vit_name=vit_info.variant or "rope_mixed_vit",
    )
    from candidates.mformer.mformer import MFormerV1

    model = MFormerV1(config)
    report = load_mformer_from_state_dicts(model, cnx_state, vit_state)
    report.unused_rope_vit = sorted(report.unused_rope_vit + dropped)
    return model, report
