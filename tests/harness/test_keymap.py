"""harness.keymap: one table of key correspondences, read both ways, naming what it cannot map."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same_state, random_state

from harness.keymap import KeyTable, Move, Rule, apply_moves

TRANSPOSE = {"op": "transpose", "dims": [0, 1]}


TABLE = KeyTable(
    Rule("downsample_layers.0.0.", "stem.0."),
    Rule("stages.{i}.{j}.dwconv.", "stages.{i}.blocks.{j}.conv_dw."),
    Rule(("blocks.{i}.q.", "blocks.{i}.k.", "blocks.{i}.v."), "blocks.{i}.attn.qkv."),
    Rule("head.weight", "head.fc.weight", steps=(TRANSPOSE,)),
    Rule("criterion.empty_weight", None),
    name="toy release",
)
RELEASE = random_state(downsample_layers__0__0__weight=(4, 3, 2, 2), downsample_layers__0__0__bias=(4,),
                 stages__1__2__dwconv__weight=(8, 1, 7, 7), blocks__0__q__weight=(6, 6), blocks__0__k__weight=(6, 6),
                 blocks__0__v__weight=(6, 6), blocks__0__q__bias=(6,), blocks__0__k__bias=(6,),
                 blocks__0__v__bias=(6,), head__weight=(6, 10), criterion__empty_weight=(3,))


def test_prefix_rule_carries_weight_and_bias_across():
    got = TABLE.to_candidate(RELEASE)
    assert {"stem.0.weight", "stem.0.bias"} <= set(got), sorted(got)


def test_index_placeholders_carry_every_index_across():
    got = TABLE.to_candidate(RELEASE)
    assert torch.equal(got["stages.1.blocks.2.conv_dw.weight"], RELEASE["stages.1.2.dwconv.weight"])


def test_several_reference_templates_are_concatenated_into_one_candidate_tensor():
    got = TABLE.to_candidate(RELEASE)
    want = torch.cat([RELEASE[f"blocks.0.{n}.weight"] for n in "qkv"])
    assert torch.equal(got["blocks.0.attn.qkv.weight"], want)


def test_layout_steps_run_reference_to_candidate():
    assert torch.equal(TABLE.to_candidate(RELEASE)["head.fc.weight"], RELEASE["head.weight"].T)


def test_the_table_read_backward_gives_back_the_release_but_the_ignored_keys():
    back = TABLE.to_reference(TABLE.to_candidate(RELEASE))
    assert_same_state(back, {k: v for k, v in RELEASE.items() if k != "criterion.empty_weight"})


def test_keys_no_rule_knows_are_named_in_the_error():
    with pytest.raises(ValueError, match=r"toy release: 1 of 12 keys match no rule: 'pos_embed'"):
        TABLE.to_candidate({**RELEASE, "pos_embed": torch.zeros(1)})


def test_a_lenient_read_lists_unmatched_and_ignored_keys():
    mapping = TABLE.map({**RELEASE, "pos_embed": torch.zeros(1)}, to="candidate", strict=False)
    assert (mapping.unmatched, mapping.ignored) == (["pos_embed"], ["criterion.empty_weight"])


def test_the_first_matching_rule_wins():
    table = KeyTable(Rule("head.fc.", "classifier."), Rule("head.", "neck."))
    assert sorted(table.to_candidate(random_state(head__fc__weight=(2, 2), head__norm__weight=(2,)))) == \
        ["classifier.weight", "neck.norm.weight"]


def test_a_missing_concat_partner_is_named():
    partial = {k: v for k, v in RELEASE.items() if k != "blocks.0.v.weight"}
    with pytest.raises(ValueError, match=r"'blocks\.0\.q\.weight' is read together with \['blocks\.0\.v\.weight'\]"):
        TABLE.to_candidate(partial)


def test_a_fused_reference_tensor_splits_into_equal_candidate_parts_and_joins_back():
    table = KeyTable(Rule("attn.qkv.", ("attn.q.", "attn.k.", "attn.v.")))
    fused = random_state(attn__qkv__weight=(12, 4))
    split = table.to_candidate(fused)
    assert [tuple(split[f"attn.{n}.weight"].shape) for n in "qkv"] == [(4, 4)] * 3
    assert_same_state(table.to_reference(split), fused)


def test_a_rule_that_reshapes_must_say_how_to_go_back():
    with pytest.raises(ValueError, match="give its reverse steps"):
        Rule("gamma", "gamma", steps=({"op": "reshape", "shape": [-1, 1, 1]},))


def test_a_reshape_with_its_reverse_reads_both_ways():
    table = KeyTable(Rule("gamma", "layer_scale", steps=({"op": "reshape", "shape": [-1, 1, 1]},),
                          reverse=({"op": "reshape", "shape": [-1]},)))
    state = random_state(gamma=(5,))
    assert tuple(table.to_candidate(state)["layer_scale"].shape) == (5, 1, 1)
    assert_same_state(table.to_reference(table.to_candidate(state)), state)


def test_templates_naming_different_indices_are_refused():
    with pytest.raises(ValueError, match="must name the same indices"):
        Rule("blocks.{i}.", "layers.{j}.")


def test_a_prefix_template_beside_a_whole_key_is_refused():
    with pytest.raises(ValueError, match="prefix"):
        Rule("blocks.{i}.", "layers.{i}.weight")


def test_a_row_that_is_not_a_rule_is_a_type_error():
    with pytest.raises(TypeError, match="must be a harness.keymap.Rule"):
        KeyTable(("a", "b"))


def test_moves_split_by_explicit_sizes():
    state = random_state(fused=(7, 2))
    out = apply_moves([Move(sources=("fused",), targets=("a", "b"), sizes=(3, 4))], state)
    assert (tuple(out["a"].shape), tuple(out["b"].shape)) == ((3, 2), (4, 2))


def test_concat_partners_may_come_in_any_order():
    state = {k: RELEASE[k] for k in ("blocks.0.k.weight", "blocks.0.v.weight", "blocks.0.q.weight")}
    table = KeyTable(Rule(("blocks.{i}.q.", "blocks.{i}.k.", "blocks.{i}.v."), "blocks.{i}.attn.qkv."))
    mapping = table.map(state, to="candidate", strict=False)
    assert (list(mapping.state), mapping.unmatched) == (["blocks.0.attn.qkv.weight"], [])


# An independent port the table was not written for: torchvision's ViT and timm's, which name and
# nest every tensor differently (torchvision keeps attention projections as bare parameters).
TORCHVISION_VIT = KeyTable(
    Rule("class_token", "cls_token"),
    Rule("encoder.pos_embedding", "pos_embed"),
    Rule("conv_proj.", "patch_embed.proj."),
    Rule("encoder.layers.encoder_layer_{i}.ln_1.", "blocks.{i}.norm1."),
    Rule("encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight", "blocks.{i}.attn.qkv.weight"),
    Rule("encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias", "blocks.{i}.attn.qkv.bias"),
    Rule("encoder.layers.encoder_layer_{i}.self_attention.out_proj.", "blocks.{i}.attn.proj."),
    Rule("encoder.layers.encoder_layer_{i}.ln_2.", "blocks.{i}.norm2."),
    Rule("encoder.layers.encoder_layer_{i}.mlp.0.", "blocks.{i}.mlp.fc1."),
    Rule("encoder.layers.encoder_layer_{i}.mlp.3.", "blocks.{i}.mlp.fc2."),
    Rule("encoder.ln.", "norm."),
    Rule("heads.head.", "head."),
    name="torchvision ViT <-> timm ViT",
)


def _vits() -> tuple[torch.nn.Module, torch.nn.Module]:
    timm = pytest.importorskip("timm")
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    reference = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32,
                                  mlp_dim=64, num_classes=5).double().eval()
    candidate = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, embed_dim=32, depth=2,
                                  num_heads=2, mlp_ratio=2, num_classes=5).double().eval()
    return candidate, reference


def test_a_torchvision_vit_loads_into_timm_through_one_table_and_computes_the_same():
    import harness

    candidate, reference = _vits()
    candidate.load_state_dict(TORCHVISION_VIT.to_candidate(reference.state_dict()), strict=True)
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    report = harness.compare(candidate, reference, image)
    assert report.passed, report.format()


def test_a_timm_vit_state_reads_back_into_the_torchvision_layout():
    candidate, reference = _vits()
    assert_same_state(TORCHVISION_VIT.to_reference(TORCHVISION_VIT.to_candidate(reference.state_dict())),
                       reference.state_dict())


def test_simplified_steps_merge_a_run_of_reshapes_into_the_last():
    from harness.keymap import simplify_steps

    steps = [{"op": "reshape", "shape": [4, 2]}, {"op": "reshape", "shape": [2, 2, 2]}]
    assert simplify_steps(steps, (8,)) == [{"op": "reshape", "shape": [2, 2, 2]}]


def test_simplified_steps_drop_a_transpose_undone_by_a_permute():
    from harness.keymap import simplify_steps

    steps = [{"op": "transpose", "dims": [0, 2]}, {"op": "permute", "dims": [2, 1, 0]}]
    assert simplify_steps(steps, (2, 3, 4)) == []


def test_simplified_steps_compose_permutes_and_keep_what_they_do():
    from harness.keymap import apply_steps, simplify_steps

    steps = [{"op": "permute", "dims": [2, 0, 1]}, {"op": "transpose", "dims": [0, 1]}, {"op": "reshape", "shape": [6, 4]}]
    x = torch.arange(24).reshape(2, 3, 4)
    simple = simplify_steps(steps, x.shape)
    assert len(simple) == 2 and torch.equal(apply_steps(x, simple), apply_steps(x, steps)), simple


def test_simplified_steps_drop_a_reshape_to_the_shape_already_there():
    from harness.keymap import simplify_steps

    assert simplify_steps([{"op": "reshape", "shape": [1, 8]}, {"op": "reshape", "shape": [8]}], (8,)) == []
