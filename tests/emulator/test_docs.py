"""Every emulator switch and every CLI option is documented in docs/emulator.md."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lockgate.cli.emulator import emulator
from lockgate.emulator import EmulatorConfig, FaultConfig

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
