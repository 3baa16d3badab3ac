"""A port whose block shifts the map, cuts its windows and builds their mask, then hands its
attention ``(windows, mask)``, against an original whose attention takes the map and does all of it
inside. Re-run on the original's input, the port's attention is given that input cut into windows;
its mask stands for nothing the original's attention is given (the twin makes its own), so it keeps
the port's own, even where it holds as many elements as the input: an error made before the block
is then received by the attention, not made there a second time."""

from __future__ import annotations

import torch
from torch import nn

from helpers import compare_port
from port_toys import MaskedWindowAttention

B, H, W, C, WS, SHIFT = 1, 8, 8, 16, 4, 2  # the mask (4, 16, 16) holds as many elements as the map


def _windows(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    return x.reshape(b, H // WS, WS, W // WS, WS, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, WS * WS, C)


def _merged(w: torch.Tensor, b: int) -> torch.Tensor:
    return w.reshape(b, H // WS, W // WS, WS, WS, C).permute(0, 1, 3, 2, 4, 5).reshape(b, H, W, C)


def _mask() -> torch.Tensor:
    """The shifted windows' mask, one ``(tokens, tokens)`` per window: -100 between regions."""
    label = torch.zeros(H, W)
    cuts = (slice(0, -WS), slice(-WS, -SHIFT), slice(-SHIFT, None))
    for n, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
        label[hs, ws] = n
    windows = _windows(label[None, :, :, None].expand(1, H, W, C))[..., 0]
    return (windows[:, None, :] != windows[:, :, None]).double() * -100.0


class ShiftedAttention(MaskedWindowAttention):
    """The original's attention: the map in, shifted, cut, masked and put back inside."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(x, (-SHIFT, -SHIFT), (1, 2))
        y = _merged(super().forward(_windows(y), _mask().to(x.dtype)), x.shape[0])
        return torch.roll(y, (SHIFT, SHIFT), (1, 2))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(C), ShiftedAttention(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class PortBlock(nn.Module):
    """The port's block: shifts, cuts and masks around an attention that sees windows."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(C), MaskedWindowAttention(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(self.norm(x), (-SHIFT, -SHIFT), (1, 2))
        y = _merged(self.attn(_windows(y), _mask().to(x.dtype)), x.shape[0])
        return x + torch.roll(y, (SHIFT, SHIFT), (1, 2))


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.embed, self.act, self.block, self.head = nn.Linear(C, C), nn.GELU(), block, nn.Linear(C, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.act(self.embed(x))))


def _report(change=lambda port: None):
    torch.manual_seed(0)
    x = torch.randn(B, H, W, C, dtype=torch.float64)
    return compare_port(Net(PortBlock()).double().eval(), Net(Block()).double().eval(), x, change)


def test_a_port_masking_its_windows_in_the_block_passes():
    report = _report()
    assert report.passed, f"expected the right port to pass, got:\n{report.format()}"


def test_an_error_before_the_block_is_not_made_again_by_the_attention_given_its_own_mask():
    report = _report(lambda port: setattr(port.act, "approximate", "tanh"))
    assert report.introduced == ["act"], \
        f"introduced {report.introduced}, expected ['act'] alone: the attention, given the original's " \
        f"input with its own mask, computes right\n{report.format()}"
