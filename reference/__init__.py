"""Reference adapters (timm, transformers) and the Pair definitions.

Each family module (``reference.convnext``, ...) registers its full pairs on import; importing it
costs torch, the candidates and timm or transformers. This package itself only declares them
(:func:`harness.catalog.register_lazy`): the table below gives every pair's name, tags and
description and the module defining it, so ``python -m harness list`` prints them without any
model library, and ``harness.get_pair(name)`` imports the defining module when the pair is first
built. ``tests/test_catalog.py`` checks that the table and the modules agree, pair for pair.
The family commands are declared the same way (:func:`harness.catalog.register_lazy_command`).
"""

from harness.catalog import register_lazy, register_lazy_command

NIGHTLY = ("nightly",)

# family module -> (name, tags, description) of every pair it registers
PAIRS = {
    "convnext": (
        ("convnext_base", NIGHTLY, "ConvNeXt-base vs timm convnext_base, input 1x3x128x128"),
        ("convnext_base_d2", (), "ConvNeXt-base widths, 2 blocks per stage, vs timm convnext_base with depths=(2, 2, 2, 2), input 1x3x128x128"),
        ("convnext_base_224", NIGHTLY, "ConvNeXt-base vs timm convnext_base, input 1x3x224x224"),
        ("convnext_base_384", NIGHTLY, "ConvNeXt-base vs timm convnext_base, input 1x3x384x384"),
        ("convnext_base_stage3_block", (), "ConvNeXt-base stage-3 block (width 1024) vs timm ConvNeXtBlock on a 7x7 map: all 49 depthwise taps"),
        ("convnext_large", NIGHTLY, "ConvNeXt-large vs timm convnext_large, input 1x3x32x32"),
        ("convnext_large_d2", (), "ConvNeXt-large widths, 2 blocks per stage, vs timm convnext_large with depths=(2, 2, 2, 2), input 1x3x128x128"),
        ("convnext_large_224", NIGHTLY, "ConvNeXt-large vs timm convnext_large, input 1x3x224x224"),
        ("convnext_large_stage3_block", (), "ConvNeXt-large stage-3 block (width 1536) vs timm ConvNeXtBlock on a 7x7 map: all 49 depthwise taps"),
        ("convnext_small", (), "ConvNeXt-small vs timm convnext_small, input 1x3x128x128"),
        ("convnext_small_224", NIGHTLY, "ConvNeXt-small vs timm convnext_small, input 1x3x224x224"),
        ("convnext_small_384", NIGHTLY, "ConvNeXt-small vs timm convnext_small, input 1x3x384x384"),
        ("convnext_small_stage3_block", (), "ConvNeXt-small stage-3 block (width 768) vs timm ConvNeXtBlock on a 7x7 map: all 49 depthwise taps"),
        ("convnext_tiny", (), "ConvNeXt-tiny vs timm convnext_tiny, input 2x3x128x128"),
        ("convnext_tiny_224", NIGHTLY, "ConvNeXt-tiny vs timm convnext_tiny, input 1x3x224x224"),
        ("convnext_tiny_384", NIGHTLY, "ConvNeXt-tiny vs timm convnext_tiny, input 1x3x384x384"),
        ("convnext_tiny_cifar", (), "ConvNeXt-T with the 3x3/1 CIFAR stem vs timm convnext_tiny with that stem swapped in"),
        ("convnext_tiny_stage3_block", (), "ConvNeXt-tiny stage-3 block (width 768) vs timm ConvNeXtBlock on a 7x7 map: all 49 depthwise taps"),
        ("convnext_xlarge", NIGHTLY, "ConvNeXt-xlarge vs timm convnext_xlarge, input 1x3x32x32"),
        ("convnext_xlarge_d2", (), "ConvNeXt-xlarge widths, 2 blocks per stage, vs timm convnext_xlarge with depths=(2, 2, 2, 2), input 1x3x128x128"),
        ("convnext_xlarge_224", NIGHTLY, "ConvNeXt-xlarge vs timm convnext_xlarge, input 1x3x224x224"),
        ("convnext_xlarge_stage3_block", (), "ConvNeXt-xlarge stage-3 block (width 2048) vs timm ConvNeXtBlock on a 7x7 map: all 49 depthwise taps"),
    ),
    "vlm": (
        ("dinov3_projector", (), "modality projector 2D pixel shuffle vs F.pixel_unshuffle formulation, grid 4x8, s=2"),
        ("dinov3_vit", (), "DINOv3 ViT (toy width) vs transformers DINOv3ViTModel, 2 x 64x64"),
        ("dinov3_vit_rect", (), "DINOv3 ViT (toy width) vs transformers DINOv3ViTModel, 1 x 640x960"),
        ("dinov3_vit_small", NIGHTLY, "DINOv3 ViT-S/16 vs transformers DINOv3ViTModel (default config), 1 x 224x320"),
        ("dinov3_vit_timm", (), "DINOv3 ViT (toy width) vs timm vit_small_patch16_dinov3, 2 x 64x64"),
        ("dinov3_vit_timm_rect", (), "DINOv3 ViT (toy width) vs timm vit_small_patch16_dinov3, 1 x 640x960"),
        ("dinov3_vit_timm_small", NIGHTLY, "DINOv3 ViT-S/16 vs timm vit_small_patch16_dinov3, 1 x 224x320"),
    ),
    "resampler": (
        ("mamba_mixer", (), "selective-scan mixer vs transformers MambaMixer (pure PyTorch), hidden 64"),
        ("mamba_mixer_bimamba", NIGHTLY, "selective-scan mixer vs transformers MambaMixer at the bimamba preset widths (1024 x 1.75)"),
    ),
    "mformer": (
        ("mformer_v1_lg", NIGHTLY, "mFormerV1-lg: convnext_large + rope_mixed_deit_base_patch16_LS, 224x224"),
        ("mformer_v1_lg_tiny", (), "mFormerV1-lg: convnext_large + rope_mixed_deit_base_patch16_LS (1+1 ConvNeXt blocks, 2 ViT blocks, 64x96)"),
        ("mformer_v1_md", NIGHTLY, "mFormerV1-md: convnext_small + rope_mixed_deit_small_patch16_LS, 224x224"),
        ("mformer_v1_md_tiny", (), "mFormerV1-md: convnext_small + rope_mixed_deit_small_patch16_LS (1+1 ConvNeXt blocks, 2 ViT blocks, 64x96)"),
        ("mformer_v1_sm", (), "mFormerV1-sm: convnext_tiny + rope_mixed_deit_small_patch16_LS, 224x224"),
        ("mformer_v1_sm_tiny", (), "mFormerV1-sm: convnext_tiny + rope_mixed_deit_small_patch16_LS (1+1 ConvNeXt blocks, 2 ViT blocks, 64x96)"),
        ("mformer_v1_xl", NIGHTLY, "mFormerV1-xl: convnext_xlarge + rope_mixed_deit_large_patch16_LS, 224x224"),
        ("mformer_v1_xl_tiny", (), "mFormerV1-xl: convnext_xlarge + rope_mixed_deit_large_patch16_LS (1+1 ConvNeXt blocks, 2 ViT blocks, 64x96)"),
    ),
    "rope_vit": (
        ("rope_mixed_vit_base", NIGHTLY, "RoPE-Mixed ViT-B vs timm vit_base_patch16_rope_mixed_224, full depth, 224x224"),
        ("rope_mixed_vit_base_d2", (), "RoPE-Mixed ViT-B vs timm vit_base_patch16_rope_mixed_224, 2 blocks, 224x224"),
        ("rope_mixed_vit_base_d2_nonsquare", (), "RoPE-Mixed ViT-B vs timm vit_base_patch16_rope_mixed_224, 2 blocks, 48x80"),
        ("rope_mixed_vit_base_nonsquare", NIGHTLY, "RoPE-Mixed ViT-B vs timm vit_base_patch16_rope_mixed_224, full depth, 160x256"),
        ("rope_mixed_vit_large", NIGHTLY, "RoPE-Mixed ViT-L vs timm vit_large_patch16_rope_mixed_224, full depth, 224x224"),
        ("rope_mixed_vit_large_d2", (), "RoPE-Mixed ViT-L vs timm vit_large_patch16_rope_mixed_224, 2 blocks, 224x224"),
        ("rope_mixed_vit_large_d2_nonsquare", (), "RoPE-Mixed ViT-L vs timm vit_large_patch16_rope_mixed_224, 2 blocks, 48x80"),
        ("rope_mixed_vit_large_nonsquare", NIGHTLY, "RoPE-Mixed ViT-L vs timm vit_large_patch16_rope_mixed_224, full depth, 160x256"),
        ("rope_mixed_vit_small", (), "RoPE-Mixed ViT-S vs timm vit_small_patch16_rope_mixed_224, full depth, 224x224"),
        ("rope_mixed_vit_small_d2", (), "RoPE-Mixed ViT-S vs timm vit_small_patch16_rope_mixed_224, 2 blocks, 224x224"),
        ("rope_mixed_vit_small_d2_nonsquare", (), "RoPE-Mixed ViT-S vs timm vit_small_patch16_rope_mixed_224, 2 blocks, 48x80"),
        ("rope_mixed_vit_small_nonsquare", (), "RoPE-Mixed ViT-S vs timm vit_small_patch16_rope_mixed_224, full depth, 160x256"),
    ),
    "videomt": (
        ("eomt_dinov3", (), "VidEoMT (DINOv3, RoPE) vs EoMT-DINOv3, one frame"),
        ("eomt_dinov3_small", NIGHTLY, "VidEoMT-DINOv3 ViT-S width vs EoMT-DINOv3, 128x128"),
        ("videomt", (), "VidEoMT (DINOv2) vs transformers Videomt, 3 frames"),
        ("videomt_2frames", (), "VidEoMT (DINOv2) vs Videomt, 2 frames"),
        ("videomt_small", NIGHTLY, "VidEoMT ViT-S width vs Videomt, 3 frames of 128x128"),
        ("videomt_small_224", NIGHTLY, "VidEoMT ViT-S width vs Videomt, a 3-frame 224x224 clip (benchmark size)"),
    ),
}

for _family, _rows in PAIRS.items():
    for _name, _tags, _description in _rows:
        register_lazy(_name, tags=_tags, description=_description, loader=f"{__name__}.{_family}")

register_lazy_command(
    "inspect", module=f"{__name__}.inspect_cli",
    help="recognize a checkpoint's family and print its inferred dimensions and parameter count",
)
register_lazy_command(
    "compat", module=f"{__name__}.inspect_cli",
    help="mFormerV1 compatibility of a ConvNeXt and a RoPE-ViT checkpoint; exit 1 if incompatible",
)
register_lazy_command(
    "add-metadata", module=f"{__name__}.resampler",
    help="write the metadata JSON (full config, versions, weights hash) for a resampler checkpoint",
)
