"""Tensor headers: a checkpoint's tensor names, shapes and dtypes, read without torch.

Recognizing a checkpoint (its family, layout and dimensions: ``python -m harness inspect``)
needs the shapes of its tensors, not their values, and importing torch takes seconds. This
module reads both checkpoint formats with the standard library:

* safetensors: an 8-byte little-endian header length, then a JSON header
  ``{name: {"dtype", "shape", "data_offsets"}}`` (and ``__metadata__``), then the data.
* ``torch.save``'s zip format: ``<archive>/data.pkl`` is a pickle whose tensors are calls
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` over persistent ids
  ``("storage", torch.<X>Storage, key, location, numel)``; storage ``key`` is the member
  ``<archive>/data/<key>``. The pickle is read by an unpickler that knows those calls, parameters
  and ordered dicts and nothing else: any other global, a legacy (non-zip) file, a big-endian
  archive or a header that does not parse makes :func:`read_headers` answer None, and the caller
  loads the file with torch (``weights_only=True``), which stays the only judge of a pickle's
  safety and writes the error messages for broken files.

Training wrappers are unwrapped by :func:`unwrap_state`, the one implementation that
:mod:`candidates.io` also uses: while a level holds one of :data:`WRAPPER_KEYS` as a mapping,
the first such replaces it; what remains must be a non-empty mapping of tensors.

A :class:`TensorHeader` stands in for a ``torch.Tensor`` where only its header matters: ``shape``,
``ndim``, ``dtype`` (a name such as ``"float32"``), ``numel()``, ``is_floating_point()``, the
layout steps of :mod:`harness.keymap` (``detach``, ``narrow``, ``reshape``, ``transpose``,
``permute``, ``split`` and :meth:`TensorHeader.cat`), which compute shapes only, and
``tolist()``, which reads a stored tensor's values from the file when a recognizer needs them
(a derived header has none: :class:`ValuesUnavailable`, and the caller falls back to torch).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from harness.checks import is_int_list

__all__ = ["MAX_SAFETENSORS_HEADER", "PICKLE_SUFFIXES", "TensorHeader", "ValuesUnavailable", "WRAPPER_KEYS",
           "read_headers", "safetensors_entry_problem", "unwrap_state"]

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")  # what a torch.save checkpoint is called; .safetensors is the other
WRAPPER_KEYS = ("model_ema", "model", "state_dict", "module")
MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors' own limit on its JSON header (trace files obey it too)

_ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1, "int64": 8,
    "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16,
}
# the dtypes whose values tolist() decodes, and their struct codes (bfloat16 is widened by hand)
_FORMATS = {"float64": "d", "float32": "f", "float16": "e", "bfloat16": "H", "int64": "q", "int32": "i",
            "int16": "h", "int8": "b", "uint8": "B", "bool": "?"}
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_STORAGE_DTYPES = {  # torch.<X>Storage -> dtype
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


class ValuesUnavailable(Exception):
    """A recognizer asked a header for values it cannot read (a derived or exotic tensor)."""


@dataclass(frozen=True)
class TensorHeader:
    """A tensor's shape and dtype, and where its values are when they were read from a file."""

    shape: tuple[int, ...]
    dtype: str
    read: Callable[[], bytes] | None = field(default=None, repr=False, compare=False)  # contiguous raw bytes

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def is_floating_point(self) -> bool:
        return self.dtype.startswith(("float", "bfloat"))

    def detach(self) -> "TensorHeader":
        return self

    def tolist(self) -> list:
        """The values, flat (tensors recognizers read are 1-D); ValuesUnavailable when not stored as read."""
        if self.read is None or self.dtype not in _FORMATS:
            raise ValuesUnavailable(f"values of a {self.dtype} tensor of shape {self.shape} are not readable here")
        code, size = _FORMATS[self.dtype], _ITEMSIZE[self.dtype]
        data = self.read()
        if len(data) != self.numel() * size:
            raise ValuesUnavailable(f"expected {self.numel() * size} bytes of {self.dtype}, read {len(data)}")
        values = [v for (v,) in struct.iter_unpack("<" + code, data)]
        if self.dtype == "bfloat16":
            values = [struct.unpack("<f", struct.pack("<I", v << 16))[0] for v in values]
        return values

    # shape-only layout steps, as torch computes them; a derived header has no values
    def _derived(self, shape: Sequence[int]) -> "TensorHeader":
        return replace(self, shape=tuple(shape), read=None)

    def _dim(self, dim: int) -> int:
        if not -self.ndim <= dim < max(self.ndim, 1):
            raise ValueError(f"dimension {dim} is out of range for a tensor of shape {self.shape}")
        return dim % max(self.ndim, 1)

    def narrow(self, dim: int, start: int, length: int) -> "TensorHeader":
        d = self._dim(dim)
        if start < 0 or length < 0 or start + length > self.shape[d]:
            raise ValueError(f"narrow({dim}, {start}, {length}) is out of range for a tensor of shape {self.shape}")
        return self._derived(self.shape[:d] + (length,) + self.shape[d + 1:])

    def reshape(self, *shape: Any) -> "TensorHeader":
        dims = list(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else list(shape)
        known = math.prod(d for d in dims if d != -1)
        if dims.count(-1) == 1 and known and self.numel() % known == 0:
            dims[dims.index(-1)] = self.numel() // known
        if math.prod(dims) != self.numel() or any(d < 0 for d in dims):
            raise ValueError(f"shape {list(shape)} is invalid for a tensor of shape {self.shape}")
        return self._derived(dims)

    def transpose(self, a: int, b: int) -> "TensorHeader":
        dims = list(self.shape)
        a, b = self._dim(a), self._dim(b)
        dims[a], dims[b] = dims[b], dims[a]
        return self._derived(dims)

    def permute(self, *dims: Any) -> "TensorHeader":
        order = [self._dim(d) for d in (dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims)]
        if sorted(order) != list(range(self.ndim)):
            raise ValueError(f"permute{tuple(order)} does not reorder the dimensions of a tensor of shape {self.shape}")
        return self._derived([self.shape[d] for d in order])

    def split(self, sizes: int | Sequence[int], dim: int = 0) -> list["TensorHeader"]:
        d = self._dim(dim)
        total = self.shape[d]
        parts = [sizes] * (-(-total // sizes)) if isinstance(sizes, int) else list(sizes)
        if isinstance(sizes, int):
            parts[-1] = total - sizes * (len(parts) - 1)
        if sum(parts) != total:
            raise ValueError(f"split sizes {parts} do not add up to {total}, dimension {dim} of {self.shape}")
        return [self._derived(self.shape[:d] + (n,) + self.shape[d + 1:]) for n in parts]

    @staticmethod
    def cat(parts: Sequence["TensorHeader"], dim: int = 0) -> "TensorHeader":
        first = parts[0]
        d = first._dim(dim)
        if any(p.ndim != first.ndim or p.shape[:d] + p.shape[d + 1:] != first.shape[:d] + first.shape[d + 1:]
               for p in parts):
            raise ValueError(f"cannot concatenate shapes {[p.shape for p in parts]} along dimension {dim}")
        return first._derived(first.shape[:d] + (sum(p.shape[d] for p in parts),) + first.shape[d + 1:])


def unwrap_state(obj: Any, path: str | os.PathLike, *, is_tensor: Callable[[Any], bool]) -> dict[str, Any]:
    """The state dict inside ``obj`` (see the module docstring); ``path`` names the file in errors."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        got = f"an empty {type(obj).__name__}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {got}")
    others = sorted(str(k) for k, v in obj.items() if not is_tensor(v))
    if len(others) == len(obj):
        raise ValueError(f"{path}: no tensors found; top-level keys are {others[:8]}")
    if others:
        raise ValueError(f"{path}: expected a state dict (name -> tensor), but {len(others)} entries are "
                         f"not tensors: {others[:8]}")
    return {str(k): v for k, v in obj.items()}


def read_headers(path: str | os.PathLike) -> dict[str, TensorHeader] | None:
    """The unwrapped state dict of the checkpoint at ``path`` as headers, or None: load it with torch.

    None for anything this reader does not fully understand (see the module docstring); a
    ValueError only for a file it understood and that is no state dict (the same message as
    :func:`candidates.io.load_state_dict` gives).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        if path.suffix == ".safetensors":
            state = _safetensors_headers(path)
        elif path.suffix in PICKLE_SUFFIXES and zipfile.is_zipfile(path):
            state = _zip_pickle_headers(path)
        else:
            return None
    except (_Unsupported, OSError, ValueError, KeyError, TypeError, IndexError, EOFError, pickle.UnpicklingError,
            zipfile.BadZipFile, struct.error):
        return None
    if state is None:
        return None
    return unwrap_state(state, path, is_tensor=lambda v: isinstance(v, TensorHeader))


def _safetensors_headers(path: Path) -> dict[str, TensorHeader] | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(MAX_SAFETENSORS_HEADER, size - 8):
            return None
        header = json.loads(f.read(n))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if safetensors_entry_problem(info, size - 8 - n) is not None:
            return None  # a header that disagrees with the file: the loader says what is wrong
        start, stop = info["data_offsets"]
        out[name] = TensorHeader(tuple(info["shape"]), _SAFETENSORS_DTYPES[info["dtype"]],
                                 read=_file_range(path, 8 + n + start, stop - start))
    return out


def safetensors_entry_problem(info: Any, data_bytes: int) -> str | None:
    """What is wrong with one tensor entry of a safetensors header whose data section holds
    ``data_bytes``: an unknown dtype, a malformed shape, offsets outside the data or a span that
    is not the shape's size; None when it holds."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        return f"an entry without dtype, shape and data_offsets ({info!r})"
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in _SAFETENSORS_DTYPES:
        return f"unknown dtype {dtype!r}"
    if not is_int_list(shape, minimum=0, kinds=(list,)):
        return f"shape {shape!r} is not a list of sizes"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        return f"data_offsets {offsets!r} are not two byte offsets"
    start, stop = offsets
    if not 0 <= start <= stop <= data_bytes:
        return f"data_offsets {offsets} fall outside the {data_bytes} bytes of data"
    if stop - start != math.prod(shape) * _ITEMSIZE[_SAFETENSORS_DTYPES[dtype]]:
        return f"{stop - start} bytes hold no {dtype} tensor of shape {shape}"
    return None


def _file_range(path: Path, offset: int, length: int) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)
    return read


class _Unsupported(Exception):
    """Something the header unpickler does not know: torch must load this file."""


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _Storage:
    dtype: str
    member: str
    numel: int


def _zip_pickle_headers(path: Path) -> dict[str, Any] | None:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            return None
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
            return None
        data = archive.read(pickles[0])
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    return _HeaderUnpickler(data, path, prefix, sizes).load()


class _HeaderUnpickler(pickle.Unpickler):
    """Rebuilds a torch zip pickle with :class:`TensorHeader` leaves; knows no other objects."""

    def __init__(self, data: bytes, path: Path, prefix: str, sizes: Mapping[str, int]) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self._path, self._prefix, self._sizes = path, prefix, sizes

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise _Unsupported(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise _Unsupported(f"persistent id {pid!r}")
        member = f"{self._prefix}data/{pid[2]}"
        if self._sizes.get(member, -1) < int(pid[4]) * _ITEMSIZE[pid[1].dtype]:
            raise _Unsupported(f"storage {member} is missing or shorter than its {pid[4]} elements")
        return _Storage(pid[1].dtype, member, int(pid[4]))

    def _rebuild_tensor(self, storage: _Storage, offset: int, size: Sequence[int], stride: Sequence[int],
                        requires_grad: bool = False, hooks: Any = None, metadata: Any = None) -> TensorHeader:
        if not isinstance(storage, _Storage):
            raise _Unsupported("a tensor without a storage")
        shape = tuple(int(d) for d in size)
        if math.prod(shape) and offset + sum((d - 1) * s for d, s in zip(shape, stride)) >= storage.numel:
            raise _Unsupported(f"a tensor of shape {shape} reaches past its storage of {storage.numel} elements")
        contiguous = tuple(stride) == tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
        read = None
        if contiguous and storage.dtype in _FORMATS:
            itemsize = _ITEMSIZE[storage.dtype]
            read = _member_range(self._path, storage.member, offset * itemsize, math.prod(shape) * itemsize)
        return TensorHeader(shape, storage.dtype, read=read)


def _member_range(path: Path, member: str, start: int, length: int) -> Callable[[], bytes]:
    def read() -> bytes:
        with zipfile.ZipFile(path) as archive:
            return archive.read(member)[start:start + length]
    return read
