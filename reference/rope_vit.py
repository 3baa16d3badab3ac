"""timm's RoPE-Mixed ViT as the parity reference for ``candidates.rope_vit``.

Reference: timm 1.0.31 ``vit_{small,base,large}_patch16_rope_mixed_224`` (``Eva`` with
``rope_type='mixed'``), built with ``pretrained=False``; eval mode, eager attention.

Pairs (``python -m harness list``):
  * ``rope_mixed_vit_{small,base,large}``            full depth, 224x224        (base/large nightly)
  * ``rope_mixed_vit_{small,base,large}_nonsquare``  full depth, 160x256        (base/large nightly)
  * ``rope_mixed_vit_{small,base,large}_d2``         2 blocks, 224x224          (default suite)
  * ``rope_mixed_vit_{small,base,large}_d2_nonsquare`` 2 blocks, 48x80, batch 2 (default suite)

timm computes the rotary table inside ``Eva.forward_features`` through ``rope.get_embed()``,
which is not a module call, so tracing hooks would never see it. :func:`expose_rope_table`
routes that call through ``rope.__call__`` so the table appears in the trace as ``rope`` and a
wrong table is localized to the candidate's ``rope`` instead of the first attention using it.
"""

from __future__ import annotations

import torch
from torch import nn

from harness import Pair, randomize_, register

from candidates.rope_vit import convert_timm_state_dict, rope_mixed_vit

__all__ = ["expose_rope_table", "randomize_rope_vit_", "timm_rope_mixed_vit", "TIMM_NAMES"]

TIMM_NAMES = {v: f"vit_{v}_patch16_rope_mixed_224" for v in ("small", "base", "large")}
NONSQUARE = (160, 256)
TINY_NONSQUARE = (48, 80)


def expose_rope_table(rope: nn.Module) -> None:
    """Make timm's ``rope.get_embed()`` a module call (same result) so tracing hooks record it."""
    get_embed = rope.get_embed
    rope.forward = get_embed
    rope.get_embed = lambda *args, **kwargs: nn.Module.__call__(rope, *args, **kwargs)


def pin_eager_attention(model: nn.Module) -> None:
    """Eager softmax attention in every block (no SDPA kernel), so every step compares bitwise."""
    for block in model.blocks:
        block.attn.fused_attn = False


def timm_rope_mixed_vit(variant: str, *, img_size: tuple[int, int] = (224, 224), depth: int | None = None) -> nn.Module:
    """timm's RoPE-Mixed ViT at a fixed input size (timm caches the rotary grid for it)."""
    extra = {} if depth is None else {"depth": depth}
    import timm  # here, not at the top: the family's CLI command needs no model library

    model = timm.create_model(TIMM_NAMES[variant], pretrained=False, img_size=img_size, **extra)
    pin_eager_attention(model)
    expose_rope_table(model.rope)
    return model.eval()


def randomize_rope_vit_(model: nn.Module, generator: torch.Generator) -> None:
    """:func:`harness.randomize_` plus rotary frequencies of order 1.

    The generic N(0, 1/fan_in) draw would give frequencies near 0.02 and rotary angles well
    below one radian; order-1 frequencies sweep the full sin/cos range over the grid and make
    a swapped x/y mixing visible.
    """
    randomize_(model, generator)
    with torch.no_grad():
        freqs = model.rope.freqs
        freqs.copy_(torch.randn(freqs.shape, generator=generator, dtype=torch.float64))


def _image(batch: int, size: tuple[int, int]):
    return lambda g: torch.randn(batch, 3, *size, generator=g)


def _register(variant: str, *, suffix: str, size: tuple[int, int], depth: int | None, batch: int, tags: frozenset) -> None:
    overrides = {} if depth is None else {"depth": depth}
    register(Pair(
        name=f"rope_mixed_vit_{variant}{suffix}",
        candidate=lambda: rope_mixed_vit(variant, **overrides),
        reference=lambda: timm_rope_mixed_vit(variant, img_size=size, depth=depth),
        convert=convert_timm_state_dict,
        make_inputs=_image(batch, size),
        randomize_fn=randomize_rope_vit_,
        tags=tags,
        description=f"RoPE-Mixed ViT-{variant[0].upper()} vs timm {TIMM_NAMES[variant]}, "
                    f"{'full depth' if depth is None else f'{depth} blocks'}, {size[0]}x{size[1]}",
    ))


for _variant in ("small", "base", "large"):
    _full = frozenset() if _variant == "small" else frozenset({"nightly"})  # ViT-S is cheap enough
    _register(_variant, suffix="", size=(224, 224), depth=None, batch=1, tags=_full)
    _register(_variant, suffix="_nonsquare", size=NONSQUARE, depth=None, batch=1, tags=_full)
    _register(_variant, suffix="_d2", size=(224, 224), depth=2, batch=1, tags=frozenset())
    _register(_variant, suffix="_d2_nonsquare", size=TINY_NONSQUARE, depth=2, batch=2, tags=frozenset())
