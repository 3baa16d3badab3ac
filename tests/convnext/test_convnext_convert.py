"""candidates.convnext.convert: the timm layout (identity), the original release's table, recognition.

The original release's key names are written out here from facebookresearch/ConvNeXt
(``models/convnext.py``: ``downsample_layers``, ``stages.i.j.dwconv/pwconv1/pwconv2``, ``norm``,
``head``), independently of the table, so a wrong row shows as a missing or unexpected name.
"""

from __future__ import annotations

import pytest
import timm
import torch

from candidates.convnext import ConvNeXt, ConvNeXtConfig, convnext_tiny
from candidates.convnext.convert import (
    ORIGINAL, convert_original_convnext, convert_timm_state_dict, convnext_to_original, recognize, to_timm_layout,
)

DEPTHS, DIMS = (1, 1, 2, 1), (8, 16, 24, 32)


def _small() -> ConvNeXt:
    torch.manual_seed(0)
    return ConvNeXt(ConvNeXtConfig(depths=DEPTHS, dims=DIMS, num_classes=5)).eval()


def _release_keys() -> set[str]:
    """Every key the original release's ConvNeXt of DEPTHS x DIMS saves."""
    keys = {f"downsample_layers.0.{m}.{p}" for m in (0, 1) for p in ("weight", "bias")}
    keys |= {f"downsample_layers.{i}.{m}.{p}" for i in (1, 2, 3) for m in (0, 1) for p in ("weight", "bias")}
    for i, depth in enumerate(DEPTHS):
        for j in range(depth):
            keys.add(f"stages.{i}.{j}.gamma")
            keys |= {f"stages.{i}.{j}.{m}.{p}" for m in ("dwconv", "norm", "pwconv1", "pwconv2")
                     for p in ("weight", "bias")}
    return keys | {"norm.weight", "norm.bias", "head.weight", "head.bias"}


def test_timm_layout_is_a_pure_identity_on_keys_and_tensors() -> None:
    state = {"stem.0.weight": torch.ones(2), "head.fc.bias": torch.zeros(3)}
    before = dict(state)
    converted = convert_timm_state_dict(state)
    assert converted is not state and state == before
    assert converted.keys() == state.keys() and all(converted[k] is state[k] for k in state)


def test_our_keys_read_backward_are_the_original_release_names() -> None:
    original = convnext_to_original(_small().state_dict())
    assert set(original) == _release_keys(), (
        f"not release names: {sorted(set(original) - _release_keys())}; "
        f"release names not produced: {sorted(_release_keys() - set(original))}"
    )


def test_original_layout_round_trips_through_the_table() -> None:
    state = _small().state_dict()
    original = convnext_to_original(state)
    back = convert_original_convnext(original)
    assert list(back) == list(state), "timm -> original -> timm changed the keys or their order"
    assert all(torch.equal(back[k], state[k]) for k in state), "timm -> original -> timm changed a tensor"
    again = convnext_to_original(back)
    assert again.keys() == original.keys()
    assert all(torch.equal(again[k], original[k]) for k in original), "original -> timm -> original changed a tensor"


def test_original_layout_converted_loads_strictly_into_timm_with_equal_outputs() -> None:
    model = _small()
    reference = timm.create_model("convnext_tiny", pretrained=False, depths=DEPTHS, dims=DIMS, num_classes=5).eval()
    reference.load_state_dict(convert_original_convnext(convnext_to_original(model.state_dict())), strict=True)
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reference(image), model(image), rtol=0, atol=1e-6)


def test_a_key_outside_the_original_layout_is_named() -> None:
    original = convnext_to_original(_small().state_dict())
    original["stages.0.0.grn.gamma"] = torch.zeros(8)  # a ConvNeXt-V2 key the table does not know
    with pytest.raises(ValueError, match=r"ConvNeXt original release .*1 of \d+ keys match no rule: 'stages.0.0.grn.gamma'"):
        convert_original_convnext(original)
    mapping = ORIGINAL.map(original, to="candidate", strict=False)
    assert mapping.unmatched == ["stages.0.0.grn.gamma"] and mapping.ignored == []


def test_a_key_outside_the_timm_layout_is_named_reading_backward() -> None:
    state = dict(_small().state_dict(), **{"head.global_pool.flatten": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"match no rule: 'head.global_pool.flatten'"):
        convnext_to_original(state)


@pytest.mark.parametrize("layout", ["timm", "original"])
def test_recognize_reads_depths_widths_and_classes_in_either_layout(layout: str) -> None:
    state = _small().state_dict()
    state = state if layout == "timm" else convnext_to_original(state)
    info = recognize(state)
    assert (info.family, info.layout, info.variant) == ("convnext", layout, None)
    assert info.dims == {"depths": list(DEPTHS), "dims": list(DIMS), "num_classes": 5}
    assert info.num_params == sum(v.numel() for v in state.values()) and info.num_tensors == len(state)
    assert info.num_heads_source is None and info.notes == []


@pytest.mark.parametrize("layout", ["timm", "original"])
def test_recognize_names_a_released_variant(layout: str) -> None:
    with torch.device("meta"):
        state = convnext_tiny().state_dict()
    info = recognize(state if layout == "timm" else convnext_to_original(state))
    assert info.variant == "convnext_tiny"


def test_recognize_notes_keys_outside_the_original_layout() -> None:
    original = dict(convnext_to_original(_small().state_dict()), extra=torch.zeros(1))
    assert recognize(original).notes == ["keys outside the original layout, not counted in dims: ['extra']"]


def test_recognize_says_a_stage_without_keys_has_unknown_depth_and_width() -> None:
    state = {k: v for k, v in _small().state_dict().items() if not k.startswith("stages.2.")}
    info = recognize(state)
    assert info.dims["depths"] == [1, 1, None, 1] and info.dims["dims"] == [8, 16, None, 32], info.dims
    assert info.notes == ["stages.2 has no keys: the checkpoint lacks a whole stage (a truncated or edited file?), "
                          "so its depth and width are unknown"]


def test_recognize_names_a_block_missing_between_stored_ones() -> None:
    state = {k: v for k, v in _small().state_dict().items() if not k.startswith("stages.2.blocks.0.")}
    info = recognize(state)
    assert info.dims["depths"] == [1, 1, 1, 1], info.dims
    assert [n.split(": the")[0] for n in info.notes] == ["stages.2.blocks: 0 missing from 0-1"], info.notes


def test_recognize_reads_a_width_off_the_blocks_when_the_downsample_is_missing() -> None:
    state = {k: v for k, v in _small().state_dict().items() if not k.startswith("stages.2.downsample.")}
    info = recognize(state)
    assert info.dims["dims"] == list(DIMS), info.dims
    assert [n.split(" is missing")[0] for n in info.notes] == ["stages.2.downsample.1.weight"], info.notes


def test_recognize_is_none_for_another_family() -> None:
    assert recognize({"cls_token": torch.zeros(1, 1, 8), "rope.freqs": torch.zeros(2, 1, 2, 2)}) is None


def test_to_timm_layout_converts_the_original_layout_and_refuses_another_family() -> None:
    state = _small().state_dict()
    original = convnext_to_original(state)
    converted, dropped = to_timm_layout(original, recognize(original))
    assert converted.keys() == state.keys() and dropped == []
    info = recognize(state)
    info.family = "rope_mixed_vit"
    with pytest.raises(ValueError, match="expected a convnext checkpoint, got family 'rope_mixed_vit'"):
        to_timm_layout(state, info)
