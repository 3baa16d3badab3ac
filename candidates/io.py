"""Checkpoint file I/O shared by the candidate families: atomic writes, state-dict loading, strict loads.

Reading. A checkpoint is ``.safetensors`` or a pickle (``.pth``/``.pt``/``.bin``/``.ckpt``) read
with ``torch.load(weights_only=True)`` only: a pickle that would run code is refused with
:class:`UnsafePickleError`, never unpickled. Training wrappers are unwrapped: while a level holds
one of :data:`WRAPPER_KEYS` as a mapping, the first such (``model_ema`` before ``model``, as timm
prefers the EMA weights) replaces it, so ``{"model": sd, "iteration": 7}`` (detectron2),
``{"state_dict": sd, "epoch": 3}`` (Lightning) and ``{"module": sd}`` (DDP) all give ``sd``. What
remains must be a non-empty mapping of tensors; every error names the file and what was expected.
:func:`state_dict_from_bytes` parses bytes already read, for callers that hash exactly what they
parse. Loaders that go on to interpret the tensors (config inference, layout conversion) wrap that
step in :func:`naming_file`, so that their errors name the file too.

Writing. :func:`write_atomically` writes a temp file on the destination's file system, fsyncs it
and renames it over the destination (:func:`harness.files.atomic_write`): readers see the old file
or the new one, a failed write leaves the old file and no temp file behind, stale temporaries of
killed writes are removed, and an OSError names the destination.

Loading into a model. :func:`load_exactly` is the one strict load of every family: keys and shapes
must match the model's exactly, and a mismatch is a ValueError listing, one per line, every
missing, unexpected and wrong-shape key with its shapes, then an optional family hint (a config
that would fit); ``nn.Module.load_state_dict`` raises a RuntimeError after a partial copy.
:func:`check_fit` is the same check without loading (a model built on the meta device only to be
compared with a checkpoint).

This module depends on torch, safetensors and the model-free :mod:`harness.files` and
:mod:`harness.headers` only, and imports torch and safetensors when a tensor is read, written or
loaded: recognition (:mod:`candidates.recognize`) imports it for :func:`naming_file` and the
reader of a checkpoint that :func:`harness.headers.read_headers` leaves to torch.
"""

from __future__ import annotations

import io
import os
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator, Mapping

from harness.files import atomic_write
from harness.headers import PICKLE_SUFFIXES, WRAPPER_KEYS, unwrap_state

if TYPE_CHECKING:
    import torch

__all__ = [
    "PICKLE_SUFFIXES", "WRAPPER_KEYS", "StateDict", "UnsafePickleError", "write_atomically", "atomic_write_bytes",
    "load_state_dict", "state_dict_from_bytes", "unwrap_state_dict", "save_state_dict", "naming_file",
    "fit_problems", "check_fit", "load_exactly",
]

StateDict = dict[str, "torch.Tensor"]


class UnsafePickleError(ValueError, pickle.UnpicklingError):
    """A pickle holding objects other than tensors and containers, refused by ``weights_only=True``.

    A ValueError (a bad user file) and an UnpicklingError (what ``torch.load`` raises for it) alike.
    """


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Run ``write(tmp)`` on a temp file, fsync it, then rename it over ``path`` (whose folder must exist)."""
    return atomic_write(path, lambda tmp: write(str(tmp)), make_parents=False)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    return write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, *, wrap: str | None = None
) -> Path:
    """Write atomically as ``.safetensors`` or a pickle (by suffix); ``wrap="model"`` nests a pickle's."""
    import safetensors.torch
    import torch

    path = Path(path)
    kind = _format(path)
    if kind == "safetensors" and wrap is not None:
        raise ValueError("safetensors files hold flat tensor maps; wrap must be None")
    state = {k: v.detach().contiguous() for k, v in state_dict.items()}
    if kind == "safetensors":
        return write_atomically(path, lambda tmp: safetensors.torch.save_file(state, tmp))
    return write_atomically(path, lambda tmp: torch.save({wrap: state} if wrap else state, tmp))


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _format(path: Path) -> str:
    """``"safetensors"`` or ``"pickle"``, from the file name's suffix."""
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix in PICKLE_SUFFIXES:
        return "pickle"
    raise ValueError(
        f"{path}: unsupported checkpoint extension {path.suffix!r}; expected .safetensors or one of {PICKLE_SUFFIXES}"
    )


def _read_safetensors(source: Path | bytes, path: Path) -> dict[str, torch.Tensor]:
    import safetensors.torch

    try:
        if isinstance(source, bytes):
            return dict(safetensors.torch.load(source))
        return safetensors.torch.load_file(str(source), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError for bad headers
        size = len(source) if isinstance(source, bytes) else path.stat().st_size
        raise ValueError(
            f"{path}: not a readable safetensors file ({size} bytes; truncated or corrupted?): {exc}"
        ) from exc


def _read_pickle(source: Path | bytes, path: Path) -> Any:
    import torch

    try:
        return torch.load(io.BytesIO(source) if isinstance(source, bytes) else source,
                          map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise UnsafePickleError(
            f"{path}: holds objects other than tensors and containers ({first_line}); checkpoints are "
            f"loaded with weights_only=True and never unpickle code. Re-save the weights alone, e.g. "
            f"torch.save(torch.load(path, weights_only=False)['model'], 'weights.pth'), from a source you trust"
        ) from exc
    except Exception as exc:
        raise ValueError(f"{path}: not a readable torch checkpoint (truncated or corrupted?): {exc}") from exc


def unwrap_state_dict(obj: Any, path: str | os.PathLike) -> StateDict:
    """The state dict inside ``obj`` (see the module docstring); ``path`` names the file in errors."""
    import torch

    return unwrap_state(obj, path, is_tensor=lambda v: isinstance(v, torch.Tensor))


def _load(source: Path | bytes, path: Path) -> StateDict:
    read = _read_safetensors if _format(path) == "safetensors" else _read_pickle
    return unwrap_state_dict(read(source, path), path)


def load_state_dict(path: str | os.PathLike) -> StateDict:
    """Tensors of a ``.safetensors`` or weights-only pickle checkpoint, on CPU, unwrapped."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    return _load(path, path)


def state_dict_from_bytes(data: bytes, path: str | os.PathLike) -> StateDict:
    """:func:`load_state_dict` of bytes already read from ``path`` (its suffix picks the format)."""
    return _load(bytes(data), Path(path))


@contextmanager
def naming_file(path: str | os.PathLike | None) -> Iterator[None]:
    """Errors raised inside that do not name ``path`` get it as a prefix (``ckpt.pth: ...``).

    ``None`` (tensors that came from no file) lets every error pass unchanged.

    A ValueError keeps its type; a KeyError or IndexError (a tensor missing or of too few
    dimensions) becomes a ValueError saying which. Other errors (wrong argument types) pass as they are.
    """
    try:
        yield
    except (ValueError, KeyError, IndexError) as exc:
        if path is None:
            raise
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        if str(path) in text:
            raise
        if not isinstance(exc, ValueError):
            raise ValueError(f"{path}: cannot interpret this checkpoint ({type(exc).__name__}: {text})") from exc
        try:
            renamed = type(exc)(f"{path}: {text}")
        except Exception:  # an error type with another constructor (UnicodeDecodeError)
            renamed = ValueError(f"{path}: {text}")
        raise renamed from exc


# ---------------------------------------------------------------------------------------------
# Loading into a model
# ---------------------------------------------------------------------------------------------


def fit_problems(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, allow_missing: Collection[str] = ()
) -> list[str]:
    """One line per key whose presence or shape differs between ``model`` and ``state``.

    Wrong shapes first (both shapes), then keys missing from ``state``, then keys ``model`` does
    not have; the model's key order, then the state's. ``allow_missing`` keys may be absent.
    """
    expected = model.state_dict()
    problems = [f"  {key}: checkpoint {_shape(state[key])} vs model {_shape(expected[key])}"
                for key in expected if key in state and state[key].shape != expected[key].shape]
    problems += [f"  {key}: missing from checkpoint (model {_shape(expected[key])})"
                 for key in expected if key not in state and key not in allow_missing]
    problems += [f"  {key}: unexpected in checkpoint {_shape(state[key])}" for key in state if key not in expected]
    return problems


def check_fit(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, what: str, source: str = "checkpoint",
    hint: str | Callable[[], str] | None = None, allow_missing: Collection[str] = (),
    error: type[ValueError] = ValueError,
) -> None:
    """Raise ``error`` listing every key of :func:`fit_problems` unless ``state`` fits ``model``.

    ``source`` names the state dict and ``what`` the model (``"{source} does not fit {what}"``);
    ``hint`` (a string, or a function called only on a mismatch) is the message's last line, e.g.
    a config that would fit. ``error`` is a family's own ValueError subclass.
    """
    problems = fit_problems(model, state, allow_missing=allow_missing)
    if problems:
        last = hint() if callable(hint) else hint
        raise error(f"{source} does not fit {what}: {len(problems)} mismatched keys\n" + "\n".join(problems)
                    + (f"\n{last}" if last else ""))


def load_exactly(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, what: str, source: str = "checkpoint",
    hint: str | Callable[[], str] | None = None, allow_missing: Collection[str] = (), assign: bool = False,
    error: type[ValueError] = ValueError,
) -> None:
    """Load ``state`` into ``model`` strictly, after :func:`check_fit` (same keyword options).

    Checked before any tensor is copied, so a refused state dict leaves ``model`` unchanged.
    ``allow_missing`` keys keep the model's own values: the caller has reported them elsewhere
    (a conversion report). ``assign=True`` puts the state's tensors themselves into ``model``
    (dtypes as stored, no cast; how a model built on the meta device is filled); a tensor still on
    the meta device afterwards (computed, not stored) is an error, never left behind silently.
    """
    check_fit(model, state, what=what, source=source, hint=hint, allow_missing=allow_missing, error=error)
    if not assign and any(t.is_meta for t in model.state_dict().values()):  # copying into meta does nothing
        raise error(f"{what} is on the meta device (shapes only); load {source} with assign=True to fill it")
    model.load_state_dict(state, strict=not allow_missing, assign=assign)
    if assign:
        left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
        if left:
            raise error(f"{what} still has tensors on the meta device after loading {source}, which does not store "
                        f"them: {left}; build the model on a real device and load without assign=True")


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))
