"""The command line words a fix in its own options: a forward taking more (or fewer) inputs than
``--input-shape`` gave is told to repeat ``--input-shape`` (not Python's ``candidate_call=``), a
forward that raises on the inputs names the side and their shapes, and models given in each other's
place for a ``--map`` are told to be swapped. Each is one ``error:`` line, exit 2.

The model specs are this file's own functions (``test_cli_inputs.py:NAME``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from harness.cli import main

HERE = str(Path(__file__))
SPECS = str(Path(__file__).with_name("port_specs.py"))


class Masked(nn.Module):
    """``forward(image, mask)``: two positional inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv(image * mask)


def masked():
    return Masked()


def image_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))


def _error(capsys, *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), f"exit {code}, stderr:\n{err}"
    return lines[0]


def test_a_forward_taking_two_inputs_given_one_input_shape_is_told_to_repeat_it(capsys):
    line = _error(capsys, "compare", "--candidate", f"{HERE}:masked", "--reference", f"{HERE}:masked",
                  "--input-shape", "1x3x8x8")
    assert "takes 2 positional inputs, forward(image, mask), but 1 --input-shape was given" in line, line
    assert "repeat --input-shape" in line and "_call=" not in line, line


def test_the_default_input_shape_is_said_to_be_the_one_input_given(capsys):
    line = _error(capsys, "map", f"{HERE}:masked", f"{HERE}:masked")
    assert "no --input-shape was given (the default is one input, 1x3x224x224)" in line, line


def test_a_forward_given_too_many_input_shapes_is_told_how_many_it_takes(capsys):
    line = _error(capsys, "map", f"{HERE}:image_net", f"{HERE}:image_net", "--input-shape", "1x3x8x8",
                  "--input-shape", "1x3x8x8")
    assert "takes at most 1 positional input, forward(input), but 2 --input-shape were given" in line, line


def test_a_forward_raising_on_an_input_without_its_batch_axis_names_the_side_and_shape(capsys):
    line = _error(capsys, "compare", "--candidate", f"{HERE}:image_net", "--reference", f"{HERE}:image_net",
                  "--input-shape", "3x8x8")
    assert "the candidate's forward raised ValueError: expected 4D input (got 3D input)" in line, line
    assert "(inputs: args.0 (3, 8, 8))" in line, line


def test_models_given_the_other_way_round_for_a_map_are_told_to_be_swapped(capsys, tmp_path):
    saved = tmp_path / "map.json"
    assert main(["map", f"{SPECS}:fused", f"{SPECS}:split", "--input-shape", "2x5x16", "--save-map", str(saved)]) == 0
    capsys.readouterr()
    line = _error(capsys, "compare", "--candidate", f"{SPECS}:split", "--reference", f"{SPECS}:fused",
                  "--input-shape", "2x5x16", "--map", str(saved))
    assert f"--candidate and --reference look swapped for --map {saved}" in line, line
    assert "transfer(" not in line, line
