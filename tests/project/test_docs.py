"""The configuration reference is complete and current (Datasette-style docs test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.errors import ConfigError
from lockgate.project.docs import render, undocumented
from lockgate.project.loader import load_project

ROOT = Path(__file__).resolve().parents[2]


def test_every_config_key_is_documented() -> None:
    assert undocumented() == []


def test_docs_config_md_is_current() -> None:
    checked_in = (ROOT / "docs" / "config.md").read_text()
    assert checked_in == render(), "run: python -m lockgate.project.docs > docs/config.md"


def test_the_reference_says_type_is_required_where_a_file_without_it_is_refused(
    tmp_path: Path,
) -> None:
    # `type:` picks a source's or destination's model: the models' default is for code only
    rows = [line for line in render().splitlines() if line.startswith("| `type` | Literal[")]
    tags = [row for row in rows if "', '" not in row]  # an attribute's `type` is a choice
    assert len(tags) == 5 and all("| required |" in row for row in tags)
    for head, missing in (
        ("sources:\n  warehouse:\n    path: w.duckdb\n", "sources.warehouse"),
        (
            "sources:\n  warehouse: {type: duckdb}\ndestinations:\n  customerio:\n    region: eu\n",
            "destinations.customerio",
        ),
    ):
        (tmp_path / "lockgate.yml").write_text("name: x\n" + head)
        with pytest.raises(ConfigError, match=f"`{missing}` has no `type`"):
            load_project(tmp_path)
