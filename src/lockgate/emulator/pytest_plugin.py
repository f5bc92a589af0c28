"""pytest fixtures for the emulator, registered through the ``pytest11`` entry point.

- ``customerio_emulator_config``: the :class:`~lockgate.emulator.EmulatorConfig` used by the
  fixture below; override it in your ``conftest.py`` to change credentials, faults or limits.
- ``customerio_emulator``: an :class:`~lockgate.emulator.Emulator` served on a free loopback port
  for one test; ``.base_url`` is set (e.g. ``http://127.0.0.1:54321``).

Example::

    def test_profile(customerio_emulator):
        httpx.put(f"{customerio_emulator.base_url}/api/v1/customers/42",
                  json={"plan": "pro"}, auth=customerio_emulator.track_auth)
        assert customerio_emulator.person(id="42").attributes["plan"] == "pro"
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from lockgate.emulator import Emulator, EmulatorConfig


@pytest.fixture
def customerio_emulator_config() -> EmulatorConfig:
    """The config for ``customerio_emulator``; override to change it."""
    from lockgate.emulator import EmulatorConfig

    return EmulatorConfig()


@pytest.fixture
def customerio_emulator(customerio_emulator_config: EmulatorConfig) -> Iterator[Emulator]:
    """A Customer.io emulator served on a free loopback port for this test."""
    from lockgate.emulator import Emulator

    emu = Emulator(customerio_emulator_config)
    with emu.serve(port=0):
        yield emu
