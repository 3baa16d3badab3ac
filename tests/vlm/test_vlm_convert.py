"""The vlm family's weight layouts: each table loads its upstream layout, reads both ways, names
what it cannot map; the value checks the tables cannot make; recognition; the trace rename rules."""

import re
from dataclasses import replace

import pytest
import torch

from candidates.vlm.convert import (
    TIMM_RENAME, TIMM_TABLE, TRANSFORMERS_RENAME, TRANSFORMERS_TABLE, convert_timm_state_dict,
    convert_transformers_state_dict, recognize, to_timm_state_dict, to_transformers_state_dict,
)
from candidates.vlm.dinov3 import VARIANTS, DinoV3ViT
from reference.vlm import TINY, TINY_TIMM, timm_dinov3, transformers_dinov3

QKV_CALLS = {f"blocks.{i}.attn.{p}_proj" for i in (0, 1) for p in "qkv"}  # applied by timm as one fused call


def _differing(a, b) -> list[str]:
    """Keys whose tensors differ, or that one side lacks."""
    return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not torch.equal(a[k], b[k]))


def _snapshot(state):
    return {k: v.clone() for k, v in state.items()}


@pytest.fixture(scope="module")
def transformers_state():
    return transformers_dinov3(TINY).state_dict()


@pytest.fixture(scope="module")
def timm_state():
    return timm_dinov3(replace(TINY_TIMM, qkv_bias=True), variant="vit_small_patch16_dinov3_qkvb").state_dict()


# --------------------------------------------------------------------------- loading each layout


@pytest.mark.parametrize("config", [TINY, VARIANTS["vit_small_patch16_dinov3_qkvb"]], ids=["tiny", "small"])
def test_transformers_layout_loads_strictly_and_leaves_its_input_alone(config):
    state = transformers_dinov3(replace(config, rope_impl="inv_freq")).state_dict()
    before = _snapshot(state)
    converted = convert_transformers_state_dict(state)
    assert not _differing(state, before), "the conversion changed its input"
    DinoV3ViT(config).load_state_dict(converted, strict=True)


def test_transformers_q_k_v_projections_are_the_rows_of_the_fused_qkv(transformers_state):
    converted = convert_transformers_state_dict(transformers_state)
    qkv = converted["blocks.1.attn.qkv.weight"]
    parts = [transformers_state[f"model.layer.1.attention.{p}_proj.weight"] for p in "qkv"]
    assert torch.equal(qkv, torch.cat(parts)), "qkv rows are not [q; k; v]"
    assert torch.equal(converted["blocks.1.attn.v_bias"], transformers_state["model.layer.1.attention.v_proj.bias"])


@pytest.mark.parametrize("variant, qkv_bias", [
    ("vit_small_patch16_dinov3", False), ("vit_small_patch16_dinov3_qkvb", True),
])
def test_timm_layout_loads_strictly_and_leaves_its_input_alone(variant, qkv_bias):
    config = replace(TINY_TIMM, qkv_bias=qkv_bias)
    reference = timm_dinov3(config, variant=variant)
    state = reference.state_dict()
    before = _snapshot(state)
    candidate = DinoV3ViT(config)
    candidate.load_state_dict(convert_timm_state_dict(state), strict=True)
    assert not _differing(state, before), "the conversion changed its input"
    assert torch.equal(candidate.blocks[0].ls2.gamma, reference.blocks[0].gamma_2)


def test_timm_classifier_head_and_zero_key_bias_are_not_carried(timm_state):
    extra = dict(timm_state, **{"head.weight": torch.zeros(3, 32), "blocks.0.attn.k_bias": torch.zeros(32)})
    assert convert_timm_state_dict(extra).keys() == convert_timm_state_dict(timm_state).keys()


def test_transformers_model_without_registers_loads():
    config = replace(TINY, num_reg_tokens=0)
    state = transformers_dinov3(config).state_dict()
    assert state["embeddings.register_tokens"].shape[1] == 0  # stored, empty
    DinoV3ViT(config).load_state_dict(convert_transformers_state_dict(state), strict=True)


# --------------------------------------------------------------------------- both directions


def test_transformers_layout_round_trips_through_the_table(transformers_state):
    back = to_transformers_state_dict(convert_transformers_state_dict(transformers_state))
    expected = {k: v for k, v in transformers_state.items() if k != "embeddings.mask_token"}
    assert not _differing(back, expected), f"changed by the round trip: {_differing(back, expected)}"


def test_candidate_layout_round_trips_through_the_transformers_table():
    candidate = DinoV3ViT(TINY).state_dict()
    back = convert_transformers_state_dict(to_transformers_state_dict(candidate))
    assert not _differing(back, candidate), f"changed by the round trip: {_differing(back, candidate)}"


def test_transformers_table_read_backward_loads_into_transformers():
    candidate = DinoV3ViT(TINY).state_dict()
    reference = transformers_dinov3(TINY)
    missing, unexpected = reference.load_state_dict(to_transformers_state_dict(candidate), strict=False)
    assert missing == ["embeddings.mask_token"] and not unexpected  # the one key the table does not carry


def test_timm_layout_round_trips_through_the_table(timm_state):
    back = to_timm_state_dict(convert_timm_state_dict(timm_state))
    assert not _differing(back, timm_state), f"changed by the round trip: {_differing(back, timm_state)}"


def test_candidate_layout_round_trips_through_the_timm_table():
    candidate = DinoV3ViT(replace(TINY_TIMM, qkv_bias=True)).state_dict()
    back = convert_timm_state_dict(to_timm_state_dict(candidate))
    assert not _differing(back, candidate), f"changed by the round trip: {_differing(back, candidate)}"


# --------------------------------------------------------------------------- what cannot be mapped


@pytest.mark.parametrize("table, convert, key", [
    (TRANSFORMERS_TABLE, convert_transformers_state_dict, "model.layer.0.mlp.gate_proj.weight"),
    (TIMM_TABLE, convert_timm_state_dict, "pos_embed"),
], ids=["transformers", "timm"])
def test_a_key_no_row_knows_is_named(table, convert, key, transformers_state, timm_state):
    state = dict(transformers_state if table is TRANSFORMERS_TABLE else timm_state, **{key: torch.zeros(1)})
    with pytest.raises(ValueError, match=rf"{re.escape(table.name)}: 1 of \d+ keys match no rule: '{key}'"):
        convert(state)


@pytest.mark.parametrize("convert", [to_transformers_state_dict, to_timm_state_dict], ids=["transformers", "timm"])
def test_a_candidate_key_no_row_knows_is_named_when_reading_backward(convert):
    state = dict(DinoV3ViT(TINY).state_dict(), **{"blocks.0.attn.k_bias": torch.zeros(32)})
    with pytest.raises(ValueError, match=r"match no rule: 'blocks\.0\.attn\.k_bias'"):
        convert(state)


def test_transformers_key_bias_is_refused(transformers_state):
    state = dict(transformers_state, **{"model.layer.0.attention.k_proj.bias": torch.zeros(32)})
    with pytest.raises(ValueError, match=r"a key bias is not supported .*model\.layer\.0\.attention\.k_proj\.bias"):
        convert_transformers_state_dict(state)


def test_transformers_lone_query_bias_is_refused(transformers_state):
    state = {k: v for k, v in transformers_state.items() if k != "model.layer.0.attention.v_proj.bias"}
    with pytest.raises(ValueError, match="layer 0: query and value biases must both be present or both absent"):
        convert_transformers_state_dict(state)


def test_timm_non_zero_key_bias_is_refused(timm_state):
    state = dict(timm_state, **{"blocks.0.attn.k_bias": torch.ones(32)})
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.k_bias: a non-zero key bias is not supported"):
        convert_timm_state_dict(state)


# --------------------------------------------------------------------------- recognition


@pytest.mark.parametrize("layout", ["transformers", "timm"])
def test_recognize_reports_the_layout_and_the_dims_the_shapes_store(layout, transformers_state, timm_state):
    info = recognize(transformers_state if layout == "transformers" else timm_state)
    assert (info.family, info.layout) == ("vlm", layout)
    dims = {k: info.dims[k] for k in ("embed_dim", "depth", "patch_size", "mlp_dim", "num_reg_tokens", "qkv_bias")}
    assert dims == {
        "embed_dim": 32, "depth": 2, "patch_size": 16, "mlp_dim": 128, "num_reg_tokens": 4, "qkv_bias": True,
    }


def test_recognize_assumes_a_released_variants_head_count_and_says_so(transformers_state):
    info = recognize(transformers_state)
    assert (info.dims["num_heads"], info.num_heads_source, info.variant) == (2, "assumed", "dinov3_tiny")
    assert any("num_heads is not stored" in note for note in info.notes), info.notes


def test_recognize_takes_a_given_head_count(timm_state):
    info = recognize(timm_state, num_heads=4)
    assert (info.dims["num_heads"], info.num_heads_source) == (4, "given")


def test_recognize_refuses_a_head_count_that_does_not_fit(timm_state):
    fits = r"head counts that fit: \[1, 2, 4, 8\]"
    with pytest.raises(ValueError, match=rf"num_heads=3 does not fit embed_dim 32.*{fits}"):
        recognize(timm_state, num_heads=3)


@pytest.mark.parametrize("state", [
    {"stem.0.weight": torch.zeros(4, 3, 4, 4), "stages.0.blocks.0.gamma": torch.zeros(4)},  # ConvNeXt
    {"cls_token": torch.zeros(1, 1, 8), "patch_embed.proj.weight": torch.zeros(8, 3, 16, 16),
     "rope.freqs": torch.zeros(1), "blocks.0.gamma_1": torch.zeros(8),
     "blocks.0.attn.qkv.weight": torch.zeros(24, 8)},  # RoPE-Mixed ViT (timm)
], ids=["convnext", "rope_mixed_vit"])
def test_recognize_returns_none_for_another_family(state):
    assert recognize(state) is None


@pytest.mark.parametrize("layout", ["transformers", "timm"])
def test_no_family_asked_before_vlm_claims_a_dinov3_state_dict(layout, transformers_state, timm_state):
    from candidates.recognize import inspect_state_dict

    info = inspect_state_dict(transformers_state if layout == "transformers" else timm_state)
    assert (info.family, info.layout) == ("vlm", layout), info.format()


# --------------------------------------------------------------------------- trace rename rules


@pytest.mark.parametrize("which", ["transformers", "timm"])
def test_rename_rules_name_an_existing_reference_module(which):
    """Every candidate module with a twin is renamed to a module the reference has."""
    from harness.align import apply_rename

    if which == "transformers":
        config, reference, rules = TINY, transformers_dinov3(TINY), TRANSFORMERS_RENAME
        untwinned = {"", "patch_embed", "blocks", "blocks.0.attn.qkv", "blocks.1.attn.qkv"}
    else:
        config, reference, rules, untwinned = TINY_TIMM, timm_dinov3(TINY_TIMM), TIMM_RENAME, {""} | QKV_CALLS
    reference_names = {n for n, _ in reference.named_modules()}
    missing = [name for name, _ in DinoV3ViT(config).named_modules()
               if name not in untwinned and apply_rename(name, rules) not in reference_names]
    assert not missing, f"renamed to no {which} module: {missing}"
