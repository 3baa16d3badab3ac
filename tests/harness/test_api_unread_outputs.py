"""Twins whose outputs hold more leaves on one side are compared on the leaves that pair: a port's
backbone returning its block outputs as a list, against an original's backbone returning a
final norm's result (that nothing reads) and every hidden state, the embedding's included, in a
dict. The leaves a later call reads pair with the port's, in order; the others pair with nothing."""

from __future__ import annotations

import torch
from torch import nn

import harness
from port_toys import randomized, tokens


class _Block(nn.Module):
    def __init__(self, act: str = "tanh") -> None:
        super().__init__()
        self.fc, self.act = nn.Linear(16, 16), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return x + (torch.tanh(y) if self.act == "tanh" else torch.relu(y))


class OriginalBackbone(nn.Module):
    """Returns ``{"last": norm(h3), "hidden": (h0, h1, h2, h3)}``; its caller reads ``hidden[1:]``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 16)
        self.layers = nn.ModuleList([_Block() for _ in range(3)])
        self.norm = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> dict:
        h = self.embed(x)
        hidden = [h]
        for layer in self.layers:
            h = layer(h)
            hidden.append(h)
        return {"last": self.norm(h), "hidden": tuple(hidden)}


class Original(nn.Module):
    """``scale``: the heads read the features scaled (no call reads the backbone's leaves themselves)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.backbone = OriginalBackbone()
        self.heads = nn.ModuleList([nn.Linear(16, 4) for _ in range(3)])
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)["hidden"][1:]
        return sum(head(self.scale * f) for head, f in zip(self.heads, features))


class PortBackbone(nn.Module):
    """Returns the block outputs as a list; ``before``: the input of each block instead (a port
    collecting the features one block too early)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 16)
        self.blocks = nn.ModuleList([_Block() for _ in range(3)])
        self.before = False

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, outs = self.stem(x), []
        for block in self.blocks:
            y = block(x)
            outs.append(x if self.before else y)
            x = y
        return outs


class Port(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.vit = PortBackbone()
        self.out = nn.ModuleList([nn.Linear(16, 4) for _ in range(3)])
        self.head_scale, self.scale = 1.0, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.vit(x)
        scales = (1.0, self.head_scale, 1.0)
        return sum(s * head(self.scale * f) for s, head, f in zip(scales, self.out, features))


def _compare(bug=lambda port: None, scale: float = 1.0, **options) -> harness.ParityReport:
    """The port mapped and given the original's weights, then changed by ``bug``, and compared."""
    original, port = randomized(Original(scale), 0), Port(scale).double().eval()
    weights = harness.map_weights(port, original, tokens())
    weights.transfer(original, port)
    bug(port)
    return harness.compare(port, original, tokens(), weights=weights, **options)


def test_fields_nothing_reads_do_not_fail_a_faithful_port():
    report = _compare()
    assert report.passed, f"a faithful port failed on its backbone's unread fields:\n{report.format()}"


def test_the_backbone_twin_is_compared_on_the_hidden_states_its_caller_reads():
    report = _compare()
    row = next(r for r in report.rows if r.candidate == "vit")
    assert row.passed and row.metrics.max_abs < 1e-12, (
        f"vit against {row.reference}: max_abs {row.metrics.max_abs:.3e} on leaf {row.leaf}, expected the block "
        f"outputs to pair with hidden.1 to hidden.3")


def test_where_no_call_reads_the_fields_the_nearest_in_value_pair():
    report = _compare(scale=2.0)
    assert report.passed, f"a faithful port whose heads read scaled features failed:\n{report.format()}"


def test_in_summary_mode_fields_nothing_reads_do_not_fail_a_faithful_port():
    report = _compare(mode="summary")
    assert report.passed, f"a faithful port compared by statistics failed:\n{report.format()}"


def test_an_error_after_the_backbone_is_blamed_on_its_module():
    report = _compare(lambda port: setattr(port, "head_scale", 1.5))
    assert not report.passed
    assert report.culprit == "<root>" and "vit" not in report.introduced, (
        f"a scale in the port's own code after its heads was blamed on {report.culprit} "
        f"(origins {report.introduced})")


def test_an_error_inside_the_backbone_is_blamed_on_its_block():
    report = _compare(lambda port: setattr(port.vit.blocks[1], "act", "relu"))
    assert report.culprit == "vit.blocks.1", (
        f"a ReLU for tanh in the second block was blamed on {report.culprit} (origins {report.introduced})")


def test_a_backbone_returning_other_hidden_states_than_its_caller_reads_is_blamed():
    report = _compare(lambda port: setattr(port.vit, "before", True))
    assert report.culprit == "vit", (
        f"a backbone returning each block's input instead of its output was blamed on {report.culprit} "
        f"(origins {report.introduced})")
