"""Resampler checkpoints that carry their own configuration.

The failure this module makes impossible: a resampler trained with ``hidden_dim=1024,
expand=1.75`` is rebuilt for evaluation from defaults (``1536, 2.0``) and dies on a size
mismatch, or worse, loads something half-right. Three layers, each reported per field:

1. **Metadata.** :func:`save_checkpoint` writes ``NAME.safetensors`` and ``NAME.metadata.json``
   holding the complete :class:`ResamplerConfig`, the library versions and the SHA-256 of the
   weights file. Both files are written atomically (temp file in the same folder, then
   ``os.replace``); the hash ties them together, so a stale or torn pair is an error.
2. **Inference from weight shapes** (:func:`~candidates.resampler.convert.infer_config`) for
   checkpoints without metadata (``hidden_dim`` from the rows of ``input_proj.weight``,
   ``expand`` from the mixer's ``in_proj.weight`` rows / (2 * hidden_dim),
   ``d_state``/``d_conv``/``dt_rank``/``depth`` from their tensors). Metadata is checked
   against it: a contradiction is an error naming field, both values and the tensor.
3. **Defaults** (a preset or a user config) only for fields that neither layer determines.

Key layouts. A training framework stores the resampler inside a bigger model, e.g. a Lightning
``.ckpt`` whose ``state_dict`` holds ``resampler_module.resampler.input_proj.weight`` next to
other modules' keys. Which prefix, and the table that reads the keys under it, are
:mod:`candidates.resampler.convert`'s job; this module records the prefix in the metadata and
reports it with its source. Loading is strict: every key the model has, none it lacks, every
shape equal, dtypes kept as stored.

Legacy ``.pth``/``.pt``/``.ckpt`` files are read with ``torch.load(weights_only=True)`` only, so
a pickle that would execute code is refused. ``python -m harness add-metadata CKPT`` (see
``reference/resampler.py``) writes the metadata for such files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import safetensors
import safetensors.torch
import torch

from candidates.io import (
    PICKLE_SUFFIXES, StateDict, UnsafePickleError, atomic_write_bytes, check_fit, load_exactly, state_dict_from_bytes,
)
from candidates.resampler.convert import FieldSource, KeyPrefix, infer_config, select_prefix
from candidates.resampler.resampler import BiMambaResampler, ResamplerConfig
from harness.checks import check_type

__all__ = [
    "CheckpointError", "LoadedCheckpoint", "metadata_path", "read_weights", "resolve_config", "save_checkpoint",
    "load_checkpoint", "load_weights_into", "write_metadata",
]

logger = logging.getLogger(__name__)

FORMAT = "bimamba-resampler-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, its config, the source of every config field and the key prefix."""

    model: BiMambaResampler
    config: ResamplerConfig
    sources: Mapping[str, FieldSource]
    path: Path
    prefix: KeyPrefix = KeyPrefix("", FieldSource("none"))

    def describe(self) -> str:
        lines = [f"loaded {self.path}", f"  {'prefix':<10} = {self.prefix}"]
        lines += [f"  {name:<10} = {getattr(self.config, name)!r:<12} <- {self.sources[name]}"
                  for name in ResamplerConfig.field_names()]
        return "\n".join(lines)


def metadata_path(weights: str | os.PathLike) -> Path:
    """``run/final.safetensors`` -> ``run/final.metadata.json``."""
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}.metadata.json")


# ---------------------------------------------------------------------------------------------
# Reading and writing files
# ---------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {exc.strerror or exc}") from exc


def _parse_weights(path: Path, data: bytes) -> StateDict:
    """Tensors of a ``.safetensors`` file or a weights-only pickle (exactly ``data``); errors name the file."""
    if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors or one of {PICKLE_SUFFIXES}")
    try:
        return state_dict_from_bytes(data, path)
    except UnsafePickleError as exc:
        raise CheckpointError(
            f"{path}: refused to unpickle: the file holds objects other than tensors and plain "
            f"containers, and only torch.load(weights_only=True) is allowed (it may try to run code). "
            f"Re-save its state dict as safetensors from a trusted environment. Details: {exc.__cause__}"
        ) from exc
    except ValueError as exc:  # unreadable, truncated, or not a state dict: the message names the file
        raise CheckpointError(str(exc)) from exc


def read_weights(path: str | os.PathLike) -> StateDict:
    """The state dict stored in ``path`` (safetensors, or a weights-only pickle)."""
    path = Path(path)
    return _parse_weights(path, _read_bytes(path))


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "safetensors": safetensors.__version__}
    try:
        versions["parity-harness"] = importlib_metadata.version("parity-harness")
    except importlib_metadata.PackageNotFoundError:
        versions["parity-harness"] = "unknown"
    return versions


def _metadata_document(config: ResamplerConfig, weights: Path, digest: str, origin: str, prefix: str,
                       sources: Mapping[str, FieldSource] | None = None) -> bytes:
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "config_sources": {k: str(v) for k, v in (sources or {}).items()},
        "weights": {"file": weights.name, "sha256": digest, "prefix": prefix},
        "versions": _versions(),
        "written_by": origin,
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def _read_metadata(path: Path, weights: Path, digest: str) -> tuple[dict[str, Any] | None, str | None]:
    """The ``config`` mapping and key prefix recorded next to ``weights``; ``(None, None)`` without metadata.

    The prefix is None when the metadata predates prefixes (it then means: detect).
    """
    if not path.exists():
        return None, None
    if not path.is_file():
        raise CheckpointError(f"{path} is a directory where the metadata JSON file of {weights.name} should be; "
                              f"remove it, then write the metadata with: python -m harness add-metadata {weights}")
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON (truncated or corrupted?): {exc}") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the metadata: {exc.strerror or exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not resampler checkpoint metadata (expected \"format\": {FORMAT!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {document.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    if not isinstance(document.get("weights"), dict):
        raise CheckpointError(f"{path}: \"weights\" must be an object {{\"file\", \"sha256\", \"prefix\"}}, "
                              f"got {document.get('weights')!r:.60}")
    recorded = document["weights"].get("sha256")
    if recorded != digest:
        raise CheckpointError(
            f"{path} was written for weights with sha256 {recorded}, but {weights} has sha256 {digest}: "
            f"the weights were changed, corrupted or replaced after the metadata was written. "
            f"If the weights are right, rewrite it with: python -m harness add-metadata {weights} --force"
        )
    config = document.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: \"config\" must be an object, got {type(config).__name__}")
    unknown = sorted(set(config) - set(ResamplerConfig.field_names()))
    if unknown:
        raise CheckpointError(f"{path}: unknown config fields {unknown}; expected a subset of {ResamplerConfig.field_names()}")
    prefix = document["weights"].get("prefix")
    if prefix is not None and not (isinstance(prefix, str) and (prefix == "" or prefix.endswith("."))):
        raise CheckpointError(f"{path}: \"weights\".\"prefix\" must be \"\" or a string ending in '.', got {prefix!r}")
    return config, prefix


# ---------------------------------------------------------------------------------------------
# The configuration: metadata, then the weights, then defaults
# ---------------------------------------------------------------------------------------------


@contextmanager
def _content_errors(path: Path) -> Iterator[None]:
    """A ValueError about what the file holds (layout, shapes) becomes a CheckpointError naming it."""
    try:
        yield
    except CheckpointError:
        raise
    except ValueError as exc:
        message = str(exc)
        raise CheckpointError(message if message.startswith(str(path)) else f"{path}: {message}") from exc


def _resampler_state(
    path: Path, weights: Mapping[str, torch.Tensor], *, prefix: str | None, recorded: str | None = None
) -> tuple[StateDict, KeyPrefix, dict[str, tuple[Any, str]]]:
    """The resampler's bare state dict in the file, the prefix it sat under, and the config its shapes imply."""
    with _content_errors(path):
        state, used = select_prefix(weights, prefix=prefix, recorded=recorded, where=str(path))
        return state, used, infer_config(state)


def _same(field: str, a: Any, b: Any) -> bool:
    if field == "expand":  # a ratio read back from shapes may differ from the written one by rounding
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
            return False  # "expand": "1.5" in metadata is a contradiction, not a number
        return abs(float(a) - float(b)) <= 1e-9 * max(abs(float(a)), abs(float(b)))
    return a == b and type(a) is type(b) or (type(a), type(b)) in ((int, float), (float, int)) and a == b


def resolve_config(
    metadata: Mapping[str, Any] | None,
    inferred: Mapping[str, tuple[Any, str]],
    defaults: ResamplerConfig,
    *,
    where: str = "checkpoint",
) -> tuple[ResamplerConfig, dict[str, FieldSource]]:
    """Per field: metadata, else the weights, else ``defaults``; metadata must agree with the weights."""
    metadata = metadata or {}
    contradictions = [
        f"  {field}: metadata says {metadata[field]!r}, but tensor {tensor} implies {value!r}"
        for field, (value, tensor) in inferred.items()
        if field in metadata and not _same(field, metadata[field], value)
    ]
    if contradictions:
        raise CheckpointError(
            f"{where}: the metadata contradicts the weights; refusing to guess which is right:\n"
            + "\n".join(contradictions)
            + "\nFix the metadata, or rewrite it from the weights with: python -m harness add-metadata WEIGHTS --force"
        )
    values: dict[str, Any] = {}
    sources: dict[str, FieldSource] = {}
    for field in ResamplerConfig.field_names():
        if field in metadata:
            values[field], sources[field] = metadata[field], FieldSource("metadata")
        elif field in inferred:
            values[field], sources[field] = inferred[field][0], FieldSource("weights", inferred[field][1])
        else:
            values[field], sources[field] = getattr(defaults, field), FieldSource("defaults")
    try:
        return ResamplerConfig(**values), sources
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: the resolved config is invalid: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Loading weights into a model
# ---------------------------------------------------------------------------------------------


def _skeleton(config: ResamplerConfig) -> BiMambaResampler:
    """A model with parameters on the meta device: shapes only, filled by ``load_exactly(..., assign=True)``."""
    with torch.device("meta"):
        return BiMambaResampler(config)


def load_weights_into(model: BiMambaResampler, path: str | os.PathLike, *, prefix: str | None = None) -> KeyPrefix:
    """Load ``path`` into an existing ``model``, strictly and bitwise (dtypes kept as stored).

    The resampler's keys are found as in :func:`~candidates.resampler.convert.select_prefix`. A
    mismatch raises one error listing every offending key with both shapes, and the config that
    would fit the checkpoint. Returns the key prefix used.
    """
    path = Path(path)
    state, used, inferred = _resampler_state(path, read_weights(path), prefix=prefix)
    def fitting_config() -> str:  # resolved only when the weights do not fit
        try:
            fitting, _ = resolve_config(None, inferred, model.config, where=str(path))
        except ValueError as exc:
            return f"No config fits these weights: {exc}"
        return f"A model that fits: BiMambaResampler({fitting!r}), or use load_checkpoint({str(path)!r})."

    load_exactly(model, state, what=f"the model built with {model.config!r}", source=f"{path} (key prefix {used})",
                 hint=fitting_config, assign=True, error=CheckpointError)
    return used


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def save_checkpoint(model: BiMambaResampler, path: str | os.PathLike) -> Path:
    """Write ``path`` (``.safetensors``) and its metadata JSON atomically; returns the metadata path."""
    path = Path(path)
    check_type("save_checkpoint(model)", model, BiMambaResampler)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoints are saved as .safetensors, got {path.name!r}")
    data = safetensors.torch.save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Weights first: if we die in between, the old metadata's hash no longer matches, and the
    # load fails loudly instead of pairing new weights with an old config.
    atomic_write_bytes(path, data)
    meta = metadata_path(path)
    atomic_write_bytes(meta, _metadata_document(model.config, path, digest, "save_checkpoint", prefix=""))
    return meta


def load_checkpoint(
    path: str | os.PathLike, *, defaults: ResamplerConfig | None = None, prefix: str | None = None
) -> LoadedCheckpoint:
    """Rebuild the resampler stored at ``path``: metadata -> weight shapes -> ``defaults``.

    ``prefix``: the resampler's key prefix inside the file (default: recorded or detected, see
    :func:`~candidates.resampler.convert.select_prefix`). Returns the model (eval mode, weights
    and dtypes bitwise as stored), its config, the source of every config field and the prefix
    (all also logged at INFO).
    """
    path = Path(path)
    defaults = ResamplerConfig() if defaults is None else defaults
    check_type("defaults", defaults, ResamplerConfig, fix="or None for ResamplerConfig()")
    data = _read_bytes(path)
    meta, recorded = _read_metadata(metadata_path(path), path, hashlib.sha256(data).hexdigest())
    state, used, inferred = _resampler_state(path, _parse_weights(path, data), prefix=prefix, recorded=recorded)
    config, sources = resolve_config(meta, inferred, defaults, where=str(path))
    model = _skeleton(config)
    load_exactly(model, state, what=f"the resolved config {config!r}", source=f"{path} (key prefix {used})",
                 assign=True, error=CheckpointError)
    loaded = LoadedCheckpoint(model.eval(), config, sources, path, used)
    logger.info("%s", loaded.describe())
    return loaded


def write_metadata(
    path: str | os.PathLike, *, defaults: ResamplerConfig | None = None, force: bool = False,
    prefix: str | None = None,
) -> tuple[Path, ResamplerConfig, dict[str, FieldSource], KeyPrefix]:
    """Write the metadata of a legacy checkpoint, inferred from its weights (``add-metadata``).

    Fields the weights do not determine come from ``defaults``; every source, and the key prefix
    (``prefix`` or detected, see :func:`~candidates.resampler.convert.select_prefix`), is
    recorded in the file. Existing metadata is kept unless ``force``.
    """
    path = Path(path)
    meta = metadata_path(path)
    if meta.is_dir():
        raise CheckpointError(f"{meta} is a directory where the metadata JSON file of {path.name} should be; remove it")
    if meta.exists() and not force:
        raise CheckpointError(f"{meta} already exists; pass force=True (--force) to rewrite it from the weights")
    data = _read_bytes(path)
    state, used, inferred = _resampler_state(path, _parse_weights(path, data), prefix=prefix)
    config, sources = resolve_config(None, inferred, defaults or ResamplerConfig(), where=str(path))
    check_fit(_skeleton(config), state, what=f"a resampler of {config!r}", source=f"{path} (key prefix {used})",
              error=CheckpointError)
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(meta, _metadata_document(config, path, digest, "add-metadata", used.value, sources))
    return meta, config, sources, used
