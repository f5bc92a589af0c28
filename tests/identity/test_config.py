"""The `identity:` section refuses what is not built, with the file, line and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.errors import ConfigError
from lockgate.project.loader import load_project

PROJECT = """\
name: split
sources:
  warehouse: {type: duckdb, path: w.duckdb}
destinations:
  customerio: {type: customerio, track_url: "http://127.0.0.1:9"}
identity:
  customerio:
    on_split: %s
"""


@pytest.mark.parametrize("policy", ["detach", "ignore"])
def test_an_on_split_policy_that_is_not_built_is_refused(tmp_path: Path, policy: str) -> None:
    (tmp_path / "lockgate.yml").write_text(PROJECT % policy)
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    message = str(err.value)
    assert "lockgate.yml:8" in message and f"`on_split: {policy}` is not implemented" in message
    assert "on_split: review" in message


def test_review_is_the_default_and_accepted(tmp_path: Path) -> None:
    (tmp_path / "lockgate.yml").write_text(PROJECT % "review")
    project = load_project(tmp_path)
    assert project.config.identity is not None
    assert project.config.identity.customerio.on_split == "review"
