"""Shared test configuration: hypothesis profiles (``--nightly`` runs long ones).

Helpers shared by the tests of several families live in ``tests/helpers.py`` (``from helpers import
...``): a module named ``conftest`` is ambiguous once a test folder has its own (tests/ports).
"""

from hypothesis import HealthCheck, settings

# Example counts live here, not in the tests, so that --nightly really runs the long version.
settings.register_profile("default", deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "nightly", deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("default")

pytest_plugins = ["pytester"]


def pytest_configure(config):
    # runs before the test modules are imported, so their @settings inherit this profile
    if config.getoption("--nightly"):
        settings.load_profile("nightly")

