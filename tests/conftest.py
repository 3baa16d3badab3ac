"""Shared test configuration: hypothesis profiles (``--nightly`` runs long ones); every test starts
from the same global random state, so a test drawing unseeded tensors draws the same ones whichever
tests ran before it on its worker (its verdict does not depend on the order or the sharding).

Helpers shared by the tests of several families live in ``tests/helpers.py`` (``from helpers import
...``): a module named ``conftest`` is ambiguous once a test folder has its own (tests/ports).
"""

import random

import pytest
import torch
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


@pytest.fixture(autouse=True)
def _same_random_state_for_every_test():
    random.seed(0)
    torch.manual_seed(0)
    yield
