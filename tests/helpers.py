"""Helpers shared by the tests of the harness and of several model families.

Import them as ``from helpers import ...`` (``tests/`` is on ``sys.path`` through the rootdir conftest).
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

# The dtypes every parity test runs at (float32: the dtype users run; float64: tight enough to tell a
# bug from rounding), with readable test ids.
PARITY_DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]


def findings_text(findings: list[dict]) -> str:
    """A diagnosis as a failure message reads it: one finding a line, with its kind."""
    return "\n".join(f"{f['kind']} | {f['text']}" for f in findings) or "(no finding)"


def transferred(candidate: torch.nn.Module, reference: torch.nn.Module, x: Any) -> tuple:
    """``(candidate, reference, weights)``: the weight correspondence found by ``harness.map_weights``
    and the reference's weights carried over into ``candidate`` through it."""
    import harness

    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    return candidate, reference, weights


def seeded(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` in float64 and eval mode with its parameters drawn by ``harness.randomize_`` from ``seed``."""
    import harness

    harness.randomize_(model.double().eval(), torch.Generator().manual_seed(seed))
    return model


def map_sources(weights: Any) -> dict[str, tuple]:
    """A weight map's entries as ``{candidate tensor: (reference tensor, steps)}``."""
    return {e.candidate: (e.reference, e.steps) for e in weights.entries}


def compare_port(candidate: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor,
                 change: Callable[[torch.nn.Module], Any] = lambda model: None) -> Any:
    """A port against its reference as a porting engineer checks it: the weight correspondence found
    by ``harness.map_weights``, the reference's weights carried over, then ``change(candidate)``
    (the injected bug, under ``no_grad``), then ``harness.compare`` through that map."""
    import harness

    _, _, weights = transferred(candidate, reference, x)
    with torch.no_grad():
        change(candidate)
    return harness.compare(candidate, reference, x, weights=weights)


def trained_statistics_(model: torch.nn.Module, seed: int = 2) -> torch.nn.Module:
    """Give every batch norm of ``model`` running statistics of its own, as a trained network has
    (``harness.randomize_`` draws parameters, not buffers): norms that do something, and that no
    two of which hold the same values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=g, dtype=buffer.dtype) * 0.4)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=g, dtype=buffer.dtype) + 0.5)
    return model


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Tokens ``(B, N, C)`` -> per head ``(B, heads, N, C / heads)``."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """Per head ``(B, heads, N, D)`` -> tokens ``(B, N, heads * D)``."""
    return t.transpose(1, 2).flatten(2)


def inject_forward(module: torch.nn.Module, forward: Callable[..., Any]) -> torch.nn.Module:
    """Replace ``module``'s forward by ``forward(self, ...)`` on this instance only: an injected bug
    that the comparison must localize (the class, and every other instance, stay correct)."""
    module.forward = types.MethodType(forward, module)
    return module


def block_without_layer_scale(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """The injected bug for a RoPE-Mixed ViT block (mFormer's blocks too): both residual branches added
    without their layer scale, as a port that forgot ``gamma_1``/``gamma_2`` would."""
    x = x + self.attn(self.norm1(x), rope)
    return x + self.mlp(self.norm2(x))


def random_state(**shapes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A seeded float64 state dict of the given shapes; ``a__b=(2, 3)`` is key ``a.b``."""
    gen = torch.Generator().manual_seed(0)
    return {k.replace("__", "."): torch.randn(*s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}


def assert_same_state(got: dict, want: dict) -> None:
    """The same keys, shapes and values, bitwise; the message names the first difference."""
    assert sorted(got) == sorted(want), f"keys differ: only got {sorted(set(got) - set(want))}, " \
                                        f"only wanted {sorted(set(want) - set(got))}"
    for key in want:
        assert got[key].shape == want[key].shape, f"{key}: shape {tuple(got[key].shape)} != {tuple(want[key].shape)}"
        assert torch.equal(got[key], want[key]), \
            f"{key}: values differ, max |diff| {(got[key] - want[key]).abs().max()}"


def swap_values_(a: torch.Tensor, b: torch.Tensor) -> None:
    """Exchange the values of two tensors of one shape in place (e.g. two weights mixed up by a port)."""
    with torch.no_grad():
        kept = a.detach().clone()
        a.copy_(b)
        b.copy_(kept)


class RunsCode:
    """Unpickling this calls exec(), which writes ``marker``: what a malicious checkpoint does.
    A loader that refuses it leaves ``marker`` absent."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def write_malicious_checkpoint(path: Path, state: dict[str, torch.Tensor], marker: Path, *, key: str = "hook") -> Path:
    """``torch.save`` of ``state`` plus, under ``key``, an object whose unpickling runs code (writes ``marker``)."""
    torch.save({**state, key: RunsCode(marker)}, path)
    return path


# One tiny state dict in each family's key layout (and the EoMT-DINOv3 release's, which no loader reads):
# the file of another family that a loader must refuse, naming it.
_VIT = "backbone.encoder.backbone."
FAMILY_STATES = {
    "convnext": {"stem.0.weight": torch.ones(8, 3, 4, 4), "stages.0.blocks.0.conv_dw.weight": torch.ones(8, 1, 7, 7)},
    "rope_vit": {"cls_token": torch.ones(1, 1, 8), "rope.freqs": torch.ones(2, 1, 2, 2),
                 "blocks.0.norm1.weight": torch.ones(8)},
    "resampler": {"input_proj.weight": torch.ones(8, 6), "output_proj.weight": torch.ones(5, 8)},
    "videomt_dinov3": {f"{_VIT}patch_embed.patch_embeddings.weight": torch.ones(8, 3, 4, 4)},
    "videomt_dinov2": {f"{_VIT}patch_embed.proj.weight": torch.ones(8, 3, 4, 4)},
    "eomt_dinov3": {"network.encoder.backbone.patch_embed.patch_embeddings.weight": torch.ones(8, 3, 4, 4)},
}


def write_family_state(folder: Path, family: str, suffix: str = ".pth") -> Path:
    """``FAMILY_STATES[family]`` saved as ``folder/<family><suffix>`` (the suffix picks the format)."""
    # Imported here: the harness's scratch-project tests copy this module where no candidates package is.
    from candidates.io import save_state_dict

    return save_state_dict(FAMILY_STATES[family], folder / f"{family}{suffix}")


def image_224() -> torch.Tensor:
    """The seeded 1x3x224x224 image the forward benchmarks time."""
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def inference_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One forward as a user runs inference (no autograd): what the forward benchmarks time."""
    with torch.inference_mode():
        return model(x)


_CLI_SCRIPT = """\
import contextlib, io, json, sys
from harness.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        codes.append(main(argv))
print(json.dumps({"codes": codes, "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")[:3]}))
"""


def cli_in_fresh_process(*argvs: list[Any]) -> tuple[list[int], list[str]]:
    """(exit codes, first torch modules imported) of ``python -m harness`` commands run one after
    another in one new interpreter: what they import at start-up, which a test process that has
    torch loaded already cannot show."""
    commands = json.dumps([[str(a) for a in argv] for argv in argvs])
    run = subprocess.run([sys.executable, "-c", _CLI_SCRIPT, commands], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return result["codes"], result["torch"]
