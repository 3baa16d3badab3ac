"""The resampler family's key tables read both ways, the prefix choice, shape inference and recognition."""

from __future__ import annotations

import pytest
import torch
from resampler_toys import TINY, WRAPPER_PREFIX, trained, wrapped_state

from candidates.resampler.convert import (
    MIXER_TABLE, find_prefixes, infer_config, recognize, resampler_table, select_prefix,
)
from candidates.recognize import inspect_state_dict
from candidates.resampler.resampler import VARIANTS, BiMambaResampler, ResamplerConfig
from reference.resampler import MIXER_SIZES, candidate_mixer, reference_mixer

NOT_IN_WEIGHTS = {"norm_eps", "preset"}


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors differ (or exist on one side only): empty when ``a`` and ``b`` are bitwise equal."""
    return sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b)) if not torch.equal(a[k], b[k])]


# --- the mixer table: transformers MambaMixer <-> ours ------------------------------------------


def test_upstream_mixer_keys_read_into_ours_unchanged_and_load_strictly():
    upstream = reference_mixer(**MIXER_SIZES, probes=False).state_dict()
    ours = MIXER_TABLE.to_candidate(upstream)
    assert _same_tensors(ours, upstream) == [], "the mixer table renamed or changed a tensor"
    candidate_mixer(**MIXER_SIZES).load_state_dict(ours, strict=True)


def test_upstream_mixer_layout_round_trips_through_the_table():
    upstream = reference_mixer(**MIXER_SIZES, probes=False).state_dict()
    back = MIXER_TABLE.to_reference(MIXER_TABLE.to_candidate(upstream))
    assert _same_tensors(back, upstream) == []


def test_a_mixer_key_the_table_does_not_know_is_named():
    upstream = reference_mixer(**MIXER_SIZES, probes=False).state_dict()
    upstream["norm.weight"] = torch.ones(MIXER_SIZES["hidden_size"])  # e.g. a whole MambaBlock's state
    with pytest.raises(ValueError, match=r"transformers MambaMixer: 1 of 10 keys match no rule: 'norm.weight'"):
        MIXER_TABLE.to_candidate(upstream)


# --- the resampler table: bare and prefixed layouts ---------------------------------------------


@pytest.mark.parametrize("prefix", ["", WRAPPER_PREFIX, "model.ema."])
@pytest.mark.parametrize("config", [TINY, ResamplerConfig(**{**TINY.to_dict(), "depth": 0, "bias": True})],
                         ids=["depth2", "depth0-bias"])
def test_prefixed_layout_round_trips_through_the_table(prefix, config):
    bare = trained(config).state_dict()
    wrapped = {f"{prefix}{k}": v for k, v in bare.items()}
    table = resampler_table(prefix)
    assert _same_tensors(table.to_candidate(wrapped), bare) == []
    assert _same_tensors(table.to_reference(bare), wrapped) == []


def test_every_tensor_of_a_resampler_has_a_row_in_the_table():
    """Both directions, both biases: a key the table missed would be dropped from every conversion."""
    config = ResamplerConfig(**{**TINY.to_dict(), "bias": True, "conv_bias": True})
    state = BiMambaResampler(config).state_dict()
    assert resampler_table().map(state, to="candidate", strict=False).unmatched == []


def test_keys_outside_the_prefix_are_counted_and_stray_keys_under_it_are_named():
    state = wrapped_state(trained())
    inner, prefix = select_prefix(state)
    assert _same_tensors(inner, trained().state_dict()) == []
    assert (prefix.value, prefix.ignored) == (WRAPPER_PREFIX, 2)  # the vision encoder and the language model
    state[f"{WRAPPER_PREFIX}blocks.0.adapter.weight"] = torch.ones(2)
    with pytest.raises(ValueError, match=rf"1 keys under prefix '{WRAPPER_PREFIX}' are no resampler tensor: "
                                         rf"\['{WRAPPER_PREFIX}blocks.0.adapter.weight'\]"):
        select_prefix(state)


# --- choosing the prefix ------------------------------------------------------------------------


def test_prefixes_are_those_directly_followed_by_input_proj_weight():
    state = {"input_proj.weight": 1, "a.b.input_proj.weight": 2, "a.xinput_proj.weight": 3, "input_proj.bias": 4}
    assert find_prefixes(state) == ["", "a.b."]


def test_the_prefix_comes_from_the_argument_then_the_metadata_then_detection():
    state = wrapped_state(trained(), prefixes=(WRAPPER_PREFIX, "ema."))
    assert str(select_prefix(state, prefix="ema")[1].source) == "argument"
    assert str(select_prefix(state, recorded="ema.")[1].source) == "metadata"
    with pytest.raises(ValueError, match=r"prefix='ema\.' contradicts the prefix 'resampler_module\.resampler\.' "
                                         r"recorded in its metadata"):
        select_prefix(state, prefix="ema.", recorded=WRAPPER_PREFIX)
    with pytest.raises(ValueError, match=r"ckpt\.pth: ambiguous key prefix: 2 prefixes"):
        select_prefix(state, where="ckpt.pth")


def test_a_state_without_a_resampler_is_refused_with_that_reason():
    with pytest.raises(ValueError, match=r"not a resampler checkpoint: no key ends in input_proj.weight under prefix"):
        select_prefix({"encoder.weight": torch.zeros(2, 2)})


# --- the configuration implied by the shapes ------------------------------------------------------


def test_infer_config_reports_the_tensor_behind_each_field():
    inferred = infer_config(trained().state_dict())
    assert inferred["depth"] == (2, "blocks.* (2 distinct indices)")
    assert inferred["dt_rank"] == (1, "blocks.0.forward_block.dt_proj.weight (12, 1)")
    assert set(inferred) == set(ResamplerConfig.field_names()) - NOT_IN_WEIGHTS


def test_infer_config_refuses_a_tensor_of_the_wrong_rank():
    state = trained().state_dict()
    state["blocks.0.forward_block.A_log"] = torch.zeros(36)
    with pytest.raises(ValueError, match=r"tensor blocks.0.forward_block.A_log should have 2 dims, has shape \(36\)"):
        infer_config(state)


# --- recognition --------------------------------------------------------------------------------


def test_a_bare_resampler_is_recognized_with_its_dims():
    info = recognize(trained().state_dict())
    assert (info.family, info.layout, info.variant, info.notes) == ("resampler", "bare", None, [])
    assert info.dims == {f: getattr(TINY, f) for f in ResamplerConfig.field_names() if f not in NOT_IN_WEIGHTS}
    model = trained()
    assert (info.num_tensors, info.num_params) == (len(model.state_dict()), sum(p.numel() for p in model.parameters()))


def test_a_wrapped_resampler_is_recognized_as_prefixed_counting_only_its_own_tensors():
    info = recognize(wrapped_state(trained(), prefixes=(WRAPPER_PREFIX, "ema.")))
    assert (info.family, info.layout) == ("resampler", "prefixed")
    assert info.num_tensors == len(trained().state_dict())
    assert info.notes[0] == "key prefix 'ema.'"
    assert "another resampler under prefix 'resampler_module.resampler.'" in info.notes[-1]


def test_a_full_size_variant_is_recognized_by_name():
    with torch.device("meta"):  # shapes are all recognition reads
        state = BiMambaResampler(VARIANTS["bimamba"]).state_dict()
    assert recognize(state).variant == "bimamba"


@pytest.mark.parametrize("state", [
    {"stem.0.weight": torch.zeros(4, 3, 4, 4)},
    {"input_proj.weight": torch.ones(8, 6), "output_proj.weight": torch.ones(5, 8)},  # no final norm: another model
], ids=["convnext", "input-and-output-proj-only"])
def test_other_models_are_not_recognized(state):
    assert recognize(state) is None


def test_the_family_loop_finds_a_resampler_and_refuses_a_head_count_for_it():
    state = wrapped_state(trained())
    assert (inspect_state_dict(state).family, inspect_state_dict(state).layout) == ("resampler", "prefixed")
    with pytest.raises(ValueError, match="is a resampler checkpoint, which has none"):
        inspect_state_dict(state, num_heads=4)
