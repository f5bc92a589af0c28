"""Reconcile: read back what Customer.io holds for a people sync and compare it with the
warehouse, attribute by attribute.

The model is extracted and mapped exactly as a run would (``extract.stage`` and
``mapping.compile_people``, in a private in-memory DuckDB, so no state lock is taken and a
sync may run meanwhile). Each valid row's payload is what Customer.io *should* hold. The
people are read through the App API (``POST /v1/customers/attributes``, 100 ids a request,
10 requests a second) and compared type-aware: the App API returns every value as a string,
so ``"1767323045"`` equals ``1767323045``, ``"true"`` equals ``true`` and ``"99.5"`` equals
``99.5``. Numbers compare exactly, with no tolerance: an integer by its decimal value (a unix
timestamp one second off, or an id past 2^53 off by one, is drift), a float as the double it
is (``"5"`` equals ``5.0``). An attribute sent as cleared (``""``) matches when Customer.io
has no value. A null the sync skips is not compared: the sync never claimed it.

Against a workspace on a loopback address (the emulator) every person is read; against a
real workspace a deterministic sample (default 1,000 people, picked by a hash of the key).
An events sync is reconciled against its ledger instead (:mod:`lockgate.sync.reconcile_events`).

Example::

    report = reconcile(project, "customer_profile", console=NullConsole())
    for attr in report.attributes:
        print(attr.attribute, attr.matched, attr.differing, attr.missing)
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlparse

import httpx
import orjson

from lockgate.console import Console
from lockgate.destinations.customerio.app_api import ATTRIBUTES_CHUNK, AppAPIClient
from lockgate.destinations.customerio.settings import CustomerIOSettings
from lockgate.errors import ConfigError
from lockgate.project.loader import Project
from lockgate.project.models import SyncConfig, resolve_env
from lockgate.state.store import run_sql
from lockgate.sync import mapping
from lockgate.sync.reconcile_events import EventsReconcileReport, reconcile_events, staged_model
from lockgate.sync.run import destination_url

DEFAULT_SAMPLE = 1000
"""People read from a real workspace unless ``sample`` says otherwise."""
SAMPLES_PER_ATTRIBUTE = 5


@dataclass(frozen=True)
class AttributeDrift:
    """One attribute across the people compared."""

    attribute: str
    matched: int = 0
    differing: int = 0
    missing: int = 0
    samples: tuple[tuple[str, Any, str | None], ...] = ()
    """(record key, warehouse value, Customer.io value or None) of people that drift."""

    @property
    def drifting(self) -> bool:
        return bool(self.differing or self.missing)

    def as_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "matched": self.matched,
            "differing": self.differing,
            "missing_in_customerio": self.missing,
            "samples": [{"key": k, "warehouse": w, "customerio": c} for k, w, c in self.samples],
        }


@dataclass(frozen=True)
class ReconcileReport:
    """What Customer.io holds for a sync's people, against the warehouse."""

    sync: str
    population: int
    """People (valid rows) in the model."""
    compared: int
    """People read back (all of them, or a sample)."""
    sampled: bool
    not_found: int
    not_found_samples: tuple[str, ...]
    attributes: tuple[AttributeDrift, ...] = field(default_factory=tuple)
    app_requests: int = 0

    @property
    def drifting(self) -> bool:
        return bool(self.not_found) or any(a.drifting for a in self.attributes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "population": self.population,
            "compared": self.compared,
            "sampled": self.sampled,
            "drifting": self.drifting,
            "people_not_found": self.not_found,
            "people_not_found_samples": list(self.not_found_samples),
            "attributes": [a.as_dict() for a in self.attributes],
            "app_api_requests": self.app_requests,
        }


def same(expected: Any, actual: Any) -> bool:
    """Whether a value Customer.io returned (a string, from the App API) is the value sent."""
    if expected == "" or expected is None:
        return actual is None or actual == ""
    if actual is None:
        return False
    if not isinstance(actual, str):
        return bool(actual == expected)
    if isinstance(expected, bool):
        return actual.strip().lower() in (("true", "1") if expected else ("false", "0"))
    if isinstance(expected, int):
        # exactly, as decimals: through a double (or with a relative tolerance) a timestamp one
        # second off, or an integer past 2^53, would compare equal; "10.0" is still 10
        try:
            return Decimal(actual.strip()) == expected
        except InvalidOperation:
            return False
    if isinstance(expected, float):
        # the same double, whichever text Customer.io gives it back as ("5" for 5.0, "1e+20")
        try:
            return float(actual) == expected
        except ValueError:
            return False
    if isinstance(expected, str):
        return actual == expected
    try:
        return bool(orjson.loads(actual) == expected)
    except orjson.JSONDecodeError:
        return False


def app_settings(project: Project, sync: SyncConfig) -> CustomerIOSettings:
    """App API settings of the sync's destination: the key from the env, the URL from
    `app_url`, `CUSTOMERIO_APP_URL`, `track_url` or `CUSTOMERIO_TRACK_URL` (in that order; an
    `${ENV_VAR}` reference in `app_url` or `track_url` is read, as a sync reads it)."""
    config = project.config.destinations[sync.destination]
    key = (
        resolve_env(config.app_api_key, field="app_api_key", at=config)
        if config.app_api_key
        else None
    )
    url = destination_url(
        config.app_url, "app_url", "CUSTOMERIO_APP_URL", config
    ) or destination_url(config.track_url, "track_url", "CUSTOMERIO_TRACK_URL", config)
    return CustomerIOSettings(
        region=config.region_to_use(),
        app_api_key=key or "",
        app_url=url,
        max_retries=config.max_retries,
    )


def is_loopback(url: str) -> bool:
    """Whether a base URL points at this machine (the emulator), not a real workspace."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _expected(
    project: Project, sync: SyncConfig, console: Console, sample: int | None
) -> tuple[int, list[tuple[str, str, str, dict[str, Any]]]]:
    """(valid rows in the model, [(key, id_type, id, attributes)] to compare)."""
    with staged_model(project, sync, console) as (con, staged):
        compiled = mapping.compile_people(sync, staged.columns, project.config.defaults.on_null)
        run_sql(
            con,
            f"""
            create temp table expected as
            select k, op from ({compiled.select})
            where reject is null
            qualify count(*) over (partition by k) = 1
            """,
        )
        population = int(con.execute("select count(*) from expected").fetchall()[0][0])
        limit = f"order by hash(k) limit {int(sample)}" if sample else "order by k"
        rows = con.execute(f"select k, op from expected {limit}").fetchall()
    out = []
    for k, op in rows:
        doc = orjson.loads(op)
        ((id_type, value),) = doc["identifiers"].items()
        attributes = {n: v for n, v in doc.get("attributes", {}).items() if n != "_update"}
        out.append((str(k), str(id_type), str(value), attributes))
    return population, out


async def _read_back(
    settings: CustomerIOSettings,
    wanted: dict[str, list[str]],
    console: Console,
    transport: httpx.AsyncBaseTransport | None,
) -> tuple[dict[tuple[str, str], dict[str, Any]], int]:
    """((id_type, id) → attributes) for the people Customer.io has, and requests made."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    total = sum(len(v) for v in wanted.values())
    async with AppAPIClient(settings, transport=transport) as app:
        with console.progress("read back from Customer.io", total) as advance:
            for id_type, ids in wanted.items():
                for start in range(0, len(ids), ATTRIBUTES_CHUNK):
                    chunk = ids[start : start + ATTRIBUTES_CHUNK]
                    for customer in await app.get_people_attributes(chunk, id_type):
                        identifiers = customer.get("identifiers") or {}
                        attributes = customer.get("attributes") or {}
                        value = identifiers.get(id_type) or attributes.get(id_type)
                        if id_type == "id":
                            value = value or customer.get("id")
                        if value is None:
                            continue
                        key = str(value).lower() if id_type == "email" else str(value)
                        found[(id_type, key)] = attributes
                    advance(len(chunk))
        return found, app.requests


def reconcile(
    project: Project,
    name: str,
    *,
    console: Console,
    sample: int | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ReconcileReport | EventsReconcileReport:
    """Compare what Customer.io holds for a people sync with the warehouse, or look for the
    events an events sync delivered (:func:`lockgate.sync.reconcile_events.reconcile_events`).

    ``sample``: how many people to read; ``None`` picks all of them against a loopback
    workspace (the emulator) and :data:`DEFAULT_SAMPLE` against a real one; ``0`` means all.
    """
    sync = project.sync(name)
    if sync.kind not in ("people", "events"):
        raise ConfigError(
            f"sync `{sync.name}` is a `{sync.kind}` sync; reconcile reads back people and events",
            hint="reconcile a people or events sync (docs/sync.md, Reconcile)",
        )
    settings = app_settings(project, sync)
    if sample is None:
        sample = 0 if is_loopback(settings.app_base) else DEFAULT_SAMPLE
    if sync.kind == "events":
        return reconcile_events(
            project, sync, settings, console=console, sample=sample, transport=transport
        )
    population, expected = _expected(project, sync, console, sample or None)
    wanted: dict[str, list[str]] = defaultdict(list)
    for _, id_type, value, _ in expected:
        wanted[id_type].append(value)
    found, requests = asyncio.run(_read_back(settings, dict(wanted), console, transport))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    samples: dict[str, list[tuple[str, Any, str | None]]] = defaultdict(list)
    not_found: list[str] = []
    for k, id_type, value, attributes in expected:
        lookup = value.lower() if id_type == "email" else value
        held = found.get((id_type, lookup))
        if held is None:
            not_found.append(k)
            continue
        for attribute, want in attributes.items():
            actual = held.get(attribute)
            if same(want, actual):
                verdict = "matched"
            elif actual is None:
                verdict = "missing"
            else:
                verdict = "differing"
            counts[attribute][verdict] += 1
            if verdict != "matched" and len(samples[attribute]) < SAMPLES_PER_ATTRIBUTE:
                samples[attribute].append((k, want, None if actual is None else str(actual)))
    drift = tuple(
        AttributeDrift(
            attribute,
            matched=counts[attribute]["matched"],
            differing=counts[attribute]["differing"],
            missing=counts[attribute]["missing"],
            samples=tuple(samples[attribute]),
        )
        for attribute in sorted(counts)
    )
    return ReconcileReport(
        sync=sync.name,
        population=population,
        compared=len(expected),
        sampled=len(expected) < population,
        not_found=len(not_found),
        not_found_samples=tuple(not_found[:SAMPLES_PER_ATTRIBUTE]),
        attributes=drift,
        app_requests=requests,
    )
