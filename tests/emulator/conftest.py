"""Fixtures for the emulator's own tests: an in-process emulator and clients per surface."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from lockgate.emulator import Emulator


@pytest.fixture
def emu() -> Emulator:
    return Emulator()


@pytest.fixture
def track(emu: Emulator) -> Iterator[httpx.Client]:
    """Track v1/v2 client, in-process, with the right Basic credentials."""
    with emu.client(auth=emu.track_auth) as client:
        yield client


def person_op(action: str, ident: dict[str, str] | None = None, **fields: object) -> dict:
    op: dict[str, object] = {"type": "person", "action": action, **fields}
    if ident is not None:
        op["identifiers"] = ident
    return op
