"""Injected bugs in registered pairs (ConvNeXt block against timm, RoPE-ViT against timm): the
diagnosis names the operation inside the culprit, and float32 (noise floor) agrees with float64."""

import pytest
import torch

import harness
from helpers import PARITY_DTYPES, inject_forward, swap_values_

BLOCK = "convnext_tiny_stage3_block"  # one ConvNeXt-T block (width 768) against timm's ConvNeXtBlock
VIT = "rope_mixed_vit_small_d2"  # RoPE-Mixed ViT-S, two blocks, against timm (eager attention)


def _convnext_forward(*, residual: bool = True, layer_scale: bool = True):
    """The candidate block's forward with its residual or its layer scale left out."""

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.mlp(self.norm(x)).permute(0, 3, 1, 2)
        if layer_scale:
            x = x * self.gamma.view(1, -1, 1, 1)
        x = self.drop_path(x)
        return shortcut + x if residual else x

    return forward


def _vit_attention_forward(*, transpose: bool = True):
    """The candidate attention's forward with the heads merged by a reshape alone (no transpose)."""
    from candidates.rope_vit.rope_vit import apply_rotary

    def forward(self, x, rope):
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        p = self.num_prefix_tokens
        q = torch.cat([q[:, :, :p], apply_rotary(q[:, :, p:], rope)], dim=2)
        k = torch.cat([k[:, :, :p], apply_rotary(k[:, :, p:], rope)], dim=2)
        x = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        x = x.transpose(1, 2) if transpose else x
        return self.proj(x.reshape(batch, tokens, dim))

    return forward


BUGS = {  # (pair, bug, culprit, expected first finding)
    "eps": (BLOCK, lambda m: setattr(m.norm, "eps", 1e-5), "norm",
            dict(kind="argument", op="layer_norm", argument="eps", candidate=1e-5, reference=1e-6)),
    "gelu_tanh": (BLOCK, lambda m: setattr(m.mlp.act, "approximate", "tanh"), "mlp.act",
                  dict(kind="argument", op="gelu", argument="approximate", candidate="tanh", reference="none")),
    "dropped_residual": (BLOCK, lambda m: inject_forward(m, _convnext_forward(residual=False)), "<root>",
                         dict(kind="missing_op", op="add")),
    "missing_layer_scale": (BLOCK, lambda m: inject_forward(m, _convnext_forward(layer_scale=False)), "<root>",
                            dict(kind="missing_op", op="mul")),
    "swapped_norm_weight_bias": (BLOCK, lambda m: swap_values_(m.norm.weight, m.norm.bias), "norm",
                                 dict(kind="argument", op="layer_norm", argument="weight",
                                      candidate="bias", reference="weight")),
    "attention_scale": (VIT, lambda m: setattr(m.blocks[1].attn, "scale", 0.125 * 1.01), "blocks.1.attn",
                        dict(kind="argument", op="scaled_dot_product_attention", argument="scale",
                             candidate=0.125 * 1.01, reference=0.125)),
    "transposed_reshape": (VIT, lambda m: inject_forward(m.blocks[0].attn, _vit_attention_forward(transpose=False)),
                           "blocks.0.attn", dict(kind="missing_op", op="transpose")),
}


@pytest.fixture(scope="module")
def built():
    """Each pair built once per dtype; a test takes a deep copy of the candidate to break."""
    import copy

    cache = {}

    def get(name, dtype):
        if (name, dtype) not in cache:
            cache[name, dtype] = harness.get_pair(name).build(dtype=dtype)
        candidate, reference = cache[name, dtype]
        return copy.deepcopy(candidate), reference

    return get


def _cases(names):
    """The ViT pair takes seconds to build and run at 224: nightly; the ConvNeXt block runs by default."""
    return [pytest.param(n, marks=pytest.mark.nightly) if (BUGS[n][0] if n in BUGS else n) == VIT else n
            for n in names]


@pytest.mark.parametrize("dtype", PARITY_DTYPES)
@pytest.mark.parametrize("name", _cases(sorted(BUGS)))
def test_injected_bug_in_registered_pair_is_diagnosed(name, dtype, built):
    pair_name, bug, culprit, expected = BUGS[name]
    pair = harness.get_pair(pair_name)
    candidate, reference = built(pair_name, dtype)
    bug(candidate)
    report = harness.compare(candidate, reference, pair.inputs(dtype=dtype), dtype=dtype, pair_name=pair_name,
                             **pair.compare_options())
    assert not report.passed and report.culprit == culprit, report.format()
    first = report.diagnosis[0]
    got = {k: first[k] for k in expected}
    assert got == pytest.approx(expected) if "scale" in name else got == expected, (
        f"first finding: {first}\nall: {report.diagnosis}")


def test_dropped_residual_in_a_convnext_block_reads_as_a_missing_add_after_its_last_operation(built):
    candidate, reference = built(BLOCK, torch.float64)
    inject_forward(candidate, _convnext_forward(residual=False))
    pair = harness.get_pair(BLOCK)
    report = harness.compare(candidate, reference, pair.inputs(dtype=torch.float64), **pair.compare_options())
    assert report.diagnosis[0]["text"].startswith(
        "<root>: add missing in the candidate after the module's last operation (mul)"), report.diagnosis


@pytest.mark.parametrize("name", _cases([BLOCK, VIT]))
def test_clean_registered_pair_passes_at_float32(name, built):
    candidate, reference = built(name, torch.float32)
    pair = harness.get_pair(name)
    report = harness.compare(candidate, reference, pair.inputs(dtype=torch.float32), **pair.compare_options())
    assert report.passed and report.noise_floor["enabled"] and report.diagnosis == [], report.format()
