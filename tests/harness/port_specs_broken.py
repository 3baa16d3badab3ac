"""A spec file whose own code fails when it runs (the command-line tests load it as a model spec)."""

import a_package_that_is_not_installed  # noqa: F401


def model():
    raise AssertionError("never reached: the import above fails first")
