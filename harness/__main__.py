import os
import sys

# Passive OpenMP waiting (see harness.plugin): spinning threads slow every command on busy cores.
# Set before anything loads torch (the CLI imports it only for commands that need it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from harness.cli import main  # noqa: E402

sys.exit(main())
