"""Every emulator switch, CLI option and unserved endpoint is documented in docs/emulator.md."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lockgate.cli.emulator import emulator
from lockgate.emulator import Emulator, EmulatorConfig, FaultConfig

DOC = (Path(__file__).resolve().parents[2] / "docs" / "emulator.md").read_text()


def test_every_config_field_is_documented() -> None:
    for cls in (EmulatorConfig, FaultConfig):
        for field in dataclasses.fields(cls):
            assert f"`{field.name}" in DOC, f"{cls.__name__}.{field.name} missing from the docs"


def test_every_cli_option_is_documented() -> None:
    for param in emulator.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert f"`{opt}" in DOC, f"{opt} missing from docs/emulator.md"


def test_endpoints_the_emulator_does_not_serve_are_listed_as_known_differences() -> None:
    """A client calling one finds 404 "no emulator route"; the docs must say so up front."""
    emu = Emulator()
    known = DOC[DOC.index("## Known differences") :]
    with emu.client(auth=emu.track_auth) as client:
        for path, documented in (
            ("/api/v1/metrics", "`POST /api/v1/metrics`"),
            ("/api/v1/push/events", "`POST /api/v1/push/events`"),
            ("/api/v1/forms/1/submit", "`POST /api/v1/forms/{form_id}/submit`"),
            ("/unsubscribe/d1", "`POST /unsubscribe/{delivery_id}`"),
        ):
            r = client.post(path, json={})
            assert r.status_code == 404 and "no emulator route" in r.text
            assert documented in known, f"{documented} missing from Known differences"
