"""Our own model implementations, one subpackage per family (model files, and ``convert.py``: its weight
layouts and ``recognize``), plus what the families share: :mod:`.layers` (primitives), :mod:`.io` (checkpoint
files, strict loading) and :mod:`.recognize` (which family and layout a state dict is)."""
