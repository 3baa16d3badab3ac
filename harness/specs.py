"""Models and inputs named on the command line.

A model spec is ``path/to/file.py:function`` or ``package.module:function``: a callable with no
required arguments returning an ``nn.Module``. An input shape is sizes joined by ``x`` or commas
(``1x3x224x224``, ``1,3,224,224``); the inputs are seeded random tensors, drawn in float64 and cast,
so that every command (``map``, ``compare --candidate``, ``record``) given the same shapes and seed
sees the same values. A kind after a colon makes an input that is not a float: ``1x6:int50`` draws
integers in ``[0, 50)`` (token ids, int64), ``1x6:bool`` a mask (three positions in four true, the
first of each row always, so no row is masked whole), ``1x6:ones`` a tensor of ones in the dtype;
these are not cast to ``--dtype``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
import sys
from typing import TYPE_CHECKING, Sequence

from harness.checks import one_line

if TYPE_CHECKING:  # torch is imported when a command runs, not when the parser is built
    import torch
    from torch import nn

__all__ = ["load_spec", "parse_shape", "random_inputs"]


def load_spec(spec: str, *, option: str = "model spec") -> "nn.Module":
    """Build the model a ``file.py:function`` or ``package.module:function`` spec names."""
    from torch import nn

    if not isinstance(spec, str) or ":" not in spec or not all(spec.rpartition(":")[::2]):
        raise ValueError(f"{option} {spec!r} is not a model spec; expected path/to/file.py:function or "
                         f"package.module:function (a callable returning an nn.Module)")
    where, _, name = spec.rpartition(":")
    if where.endswith(".py"):
        if not os.path.isfile(where):
            raise ValueError(f"{option} {spec!r}: no file {where!r}")
        loader = importlib.util.spec_from_file_location(f"_harness_spec_{abs(hash(os.path.abspath(where)))}", where)
        module = importlib.util.module_from_spec(loader)
        sys.path.insert(0, os.path.dirname(os.path.abspath(where)))  # the file's own imports
        try:
            loader.loader.exec_module(module)
        except Exception as exc:  # the file's own code: a syntax error, a failing import
            raise ValueError(f"{option} {spec!r}: running {where!r} raised {_raised(exc)}; fix that file") from exc
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ValueError(f"{option} {spec!r}: cannot import {where!r} ({exc})") from None
        except Exception as exc:
            raise ValueError(f"{option} {spec!r}: importing {where!r} raised {_raised(exc)}; fix that module") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"{option} {spec!r}: {where!r} has no callable {name!r}")
    try:
        model = factory()
    except Exception as exc:  # the user's factory: a missing argument, a failing constructor
        raise ValueError(f"{option} {spec!r}: {name}() raised {_raised(exc)}; the function must build the model "
                         f"with no arguments (wrap it in one that does)") from exc
    if not isinstance(model, nn.Module):
        raise TypeError(f"{option} {spec!r}: {name}() returned {type(model).__name__}, expected an nn.Module")
    return model


def _raised(exc: BaseException) -> str:
    """``TypeError: message`` on one line."""
    return f"{type(exc).__name__}: {one_line(exc)}"


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x3x224x224"`` or ``"1,3,224,224"`` -> ``(1, 3, 224, 224)``."""
    parts = [p for p in re.split(r"[x,\s]+", text.strip().lower()) if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"--input-shape {text!r}: expected positive sizes joined by 'x', e.g. 1x3x224x224 "
                         f"(repeat --input-shape for several inputs; a kind may follow a colon: {_KINDS})")
    return shape


_KINDS = "int<N> (integers in [0, N)), bool (a mask) or ones"


def _input_kind(text: str) -> tuple[str, str, int]:
    """``"1x6:int50"`` -> ``("1x6", "int", 50)``; ``"1x3x8x8"`` -> ``("1x3x8x8", "float", 0)``."""
    shape, _, kind = text.partition(":")
    kind = kind.strip().lower()
    if not kind:
        return shape, "float", 0
    if kind in ("bool", "ones"):
        return shape, kind, 0
    high = re.fullmatch(r"int(\d+)", kind)
    if high is None or int(high.group(1)) < 1:
        raise ValueError(f"--input-shape {text!r}: unknown input kind {kind!r}; after the shape give {_KINDS}, "
                         f"e.g. 1x16:int1000 for token ids")
    return shape, "int", int(high.group(1))


def _draw(shape: tuple[int, ...], kind: str, high: int, dtype: "torch.dtype",
          generator: "torch.Generator") -> "torch.Tensor":
    import torch

    if kind == "int":
        return torch.randint(0, high, shape, generator=generator)
    if kind == "bool":
        mask = torch.rand(shape, generator=generator, dtype=torch.float64) < 0.75
        mask[..., 0] = True  # a row masked whole would leave an attention nothing to attend to
        return mask
    if kind == "ones":
        return torch.ones(shape, dtype=dtype)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype=dtype)


def random_inputs(shapes: Sequence[str], dtype: "torch.dtype", *, seed: int = 0,
                  device: "torch.device | str" = "cpu") -> tuple["torch.Tensor", ...]:
    """Seeded random tensors of the given shapes (one positional input each), of the kind each
    names after a colon (see the module docstring)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for text in shapes:
        shape_text, kind, high = _input_kind(text)
        shape = parse_shape(shape_text)
        try:
            inputs.append(_draw(shape, kind, high, dtype, generator).to(device=device))
        except (RuntimeError, MemoryError) as exc:  # the allocator refused
            size = math.prod(shape) * 8 / 2**30
            raise ValueError(f"--input-shape {text!r}: cannot allocate that input ({size:.3g} GiB in float64: "
                             f"{_raised(exc)[:120]}); give a smaller shape") from None
    return tuple(inputs)
