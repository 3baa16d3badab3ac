"""tox plugin (loaded by tox from the project root): named modes that run in the one test environment.

``tox -e parity``, ``-e nightly`` and ``-e bench`` are the same environment as ``py311`` (same
python, same dependencies) with other pytest arguments. tox 4 records in each environment folder
the name of the env that built it and rebuilds the folder when a differently named env claims it,
so three modes sharing ``.tox/py311`` would each rebuild torch, timm and transformers. The
``mode`` runner compares that record as the folder's owner (the env named by the folder) wrote it;
everything else (python version, dependencies, the package) is checked as usual, so a real change
still rebuilds.
"""

from __future__ import annotations

from tox.plugin import impl
from tox.tox_env.info import Info
from tox.tox_env.python.virtual_env.runner import VirtualEnvRunner


class _AsOwner(Info):
    """The env folder's record, with the env identity read as the owner's."""

    def __init__(self, path, owner: str) -> None:
        super().__init__(path)
        self._owner = owner

    def compare(self, value, section, sub_section=None):
        if section == "ToxEnv" and isinstance(value, dict):
            value = {**value, "name": self._owner, "type": VirtualEnvRunner.__name__}
        return super().compare(value, section, sub_section)


class ModeRunner(VirtualEnvRunner):
    """A virtualenv run env living in another env's folder (``env_dir``), named after its mode."""

    @staticmethod
    def id() -> str:
        return "mode"

    @property
    def cache(self) -> Info:
        return _AsOwner(self.env_dir, self.env_dir.name)


@impl
def tox_register_tox_env(register) -> None:
    register.add_run_env(ModeRunner)
