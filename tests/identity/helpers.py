"""A config like identity.md §3.1 and small helpers to build source tables and read outcomes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from lockgate.identity.engine import resolve
from lockgate.identity.state import IdentityResult, IdentityState
from lockgate.project.identity import IdentityConfig

T0 = datetime(2025, 1, 1, tzinfo=UTC)

SPEC_CONFIG: dict[str, Any] = {
    "identifier_types": {
        "cio_id": {"priority": 0, "limit": None, "customerio": "cio_id"},
        "user_id": {"priority": 1, "limit": 1, "customerio": "id"},
        "email": {
            "priority": 2,
            "limit": 5,
            "validate": "email_shape",
            "customerio": "email",
            "limit_exempt_sources": ["app_users"],
        },
        "stripe_customer_id": {
            "priority": 3,
            "limit": 2,
            "validate": {"regex": "^cus_[A-Za-z0-9]+$"},
            "degree_cap": {"user_id": {"max": 1, "policy": "keep_latest"}},
            "customerio": "attribute:stripe_customer_id",
        },
        "crm_contact_id": {
            "priority": 4,
            "limit": 1,
            "namespace": "hubspot",
            "customerio": "attribute:crm_contact_id",
        },
        "phone": {
            "priority": 5,
            "limit": 2,
            "degree_cap": {"user_id": {"max": 1, "policy": "keep_latest"}},
            "customerio": "attribute:phone",
        },
        "anonymous_id": {
            "priority": 9,
            "limit": 25,
            "degree_cap": {
                "user_id": {"max": 1, "policy": "quarantine"},
                "email": {"max": 3, "policy": "quarantine"},
            },
            "bridge_known_profiles": False,
            "customerio": "anonymous_id",
        },
    },
    "sources": [
        {"name": "customerio_people", "table": "cio.people", "trust": 1},
        {"name": "app_users", "table": "app.users", "trust": 1, "observed_at": "ts"},
        {"name": "stripe_customers", "table": "stripe.customers", "trust": 1, "observed_at": "ts"},
        {"name": "crm_contacts", "table": "crm.contacts", "trust": 2, "observed_at": "ts"},
        {"name": "newsletter", "table": "mkt.leads", "trust": 2, "mode": "append_only"},
        {
            "name": "identifies",
            "table": "events.identifies",
            "trust": 3,
            "mode": "append_only",
            "observed_at": "ts",
        },
    ],
    "customerio": {"merge_policy": {"max_merges_per_run": 500}},
}


def config(**changes: Any) -> IdentityConfig:
    data = {**SPEC_CONFIG}
    for key, value in changes.items():
        data[key] = value
    return IdentityConfig.model_validate(data)


def rows(*records: dict[str, Any], columns: list[str] | None = None) -> pa.Table:
    """A source table from dicts; `ts` given as day numbers becomes a timestamp."""
    names = columns or sorted({k for r in records for k in r} | {"ts"})
    data: dict[str, list[Any]] = {n: [r.get(n) for r in records] for n in names}
    if "ts" in data:
        data["ts"] = [None if d is None else T0 + timedelta(days=d) for d in data["ts"]]
    return pa.table(
        {
            n: pa.array(v, pa.timestamp("us", tz="UTC") if n == "ts" else pa.string())
            for n, v in data.items()
        }
    )


def run(
    cfg: IdentityConfig,
    inputs: dict[str, pa.Table],
    *,
    state: IdentityState | None = None,
    run_id: str = "r1",
    **kw: Any,
) -> IdentityResult:
    return resolve(cfg, inputs, run_id=run_id, state=state, **kw)


def profile_of(result: IdentityResult, id_type: str, value: str) -> str | None:
    for r in result.identifier_map.to_pylist():
        if r["id_type"] == id_type and r["id_value"] == value:
            return r["profile_id"]  # type: ignore[no-any-return]
    raise AssertionError(f"{id_type}:{value} is not a node")


def groups(result: IdentityResult) -> set[frozenset[str]]:
    """The partition as sets of `type:value`, independent of profile ids."""
    by: dict[str, set[str]] = {}
    for r in result.identifier_map.to_pylist():
        if r["profile_id"] is not None:
            by.setdefault(r["profile_id"], set()).add(f"{r['id_type']}:{r['id_value']}")
    return {frozenset(v) for v in by.values()}


def warehouse_groups(fetch: Callable[[str], list[tuple[Any, ...]]]) -> set[frozenset[str]]:
    """The in-warehouse engine's profiles (active identifiers per component), as `groups`."""
    by: dict[object, set[str]] = {}
    for id_type, value, component, status in fetch(
        "SELECT id_type, id_value, component, status FROM lg_wh_components"
    ):
        if status == "active":
            by.setdefault(component, set()).add(f"{id_type}:{value}")
    return {frozenset(v) for v in by.values()}
