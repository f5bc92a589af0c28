"""A tiny project factory: a DuckDB warehouse, lockgate.yml and sync files in tmp_path,
pointed at the emulator served by the `customerio_emulator` fixture."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.sync.helpers import warehouse_sql

from lockgate.emulator import Emulator, EmulatorConfig
from lockgate.project.loader import Project, load_project

PROJECT_YML = """\
name: test
sources:
  warehouse:
    type: duckdb
    path: warehouse.duckdb
destinations:
  customerio:
    type: customerio
    track_url: {url}
    rate_limit: 1000/s
    max_retries: {retries}
"""


class ProjectFactory:
    def __init__(self, root: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.emulator = emulator
        site_id, api_key = emulator.track_auth
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", site_id)
        monkeypatch.setenv("CUSTOMERIO_API_KEY", api_key)

    def sql(self, statements: str) -> None:
        warehouse_sql(self.root / "warehouse.duckdb", statements)

    def write(self, syncs: dict[str, str], *, url: str | None = None, retries: int = 3) -> Project:
        (self.root / "syncs").mkdir(exist_ok=True)
        for old in (self.root / "syncs").glob("*.yml"):
            old.unlink()
        (self.root / "lockgate.yml").write_text(
            PROJECT_YML.format(url=url or self.emulator.base_url, retries=retries)
        )
        for name, body in syncs.items():
            (self.root / "syncs" / f"{name}.yml").write_text(textwrap.dedent(body))
        return load_project(self.root)


@pytest.fixture
def customerio_emulator_config() -> EmulatorConfig:
    # Lockgate sends ULID event ids: hold it to the strictest reading of the API
    return EmulatorConfig(require_ulid_event_ids=True)


@pytest.fixture
def project_factory(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> ProjectFactory:
    return ProjectFactory(tmp_path, customerio_emulator, monkeypatch)


Factory = Callable[..., Project]
