"""Our own model implementations, one subpackage per family (model files, ``config.py``: its frozen
configs and ``VARIANTS``, and ``convert.py``: its weight layouts and ``recognize``), plus what the
families share: :mod:`.layers` (primitives), :mod:`.io` (checkpoint files, strict loading) and
:mod:`.recognize` (which family and layout a state dict is).

Recognizing a checkpoint (``python -m harness inspect``) needs no torch: a family's ``config.py``
and ``convert.py`` import none at module level, and a family package exports its names lazily
(:func:`candidates.exports.lazy_exports`), so that importing ``candidates.<family>.convert`` does
not load the model files. The model files import torch; they load the first time one of their
names is used.
"""
