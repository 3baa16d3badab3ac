"""Reference adapters (timm, transformers) and the Pair definitions.

Every module of this package registers its pairs on import; the harness imports the package
through the ``parity_harness.pairs`` entry point, which imports every submodule below.
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
