"""The configuration reference is complete and current (Datasette-style docs test)."""

from __future__ import annotations

from pathlib import Path

from lockgate.project.docs import render, undocumented

ROOT = Path(__file__).resolve().parents[2]


def test_every_config_key_is_documented() -> None:
    assert undocumented() == []


def test_docs_config_md_is_current() -> None:
    checked_in = (ROOT / "docs" / "config.md").read_text()
    assert checked_in == render(), "run: python -m lockgate.project.docs > docs/config.md"
