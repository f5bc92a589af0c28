"""Load spooled webhook events into the warehouse with dlt.

Each run reads the oldest unloaded spool records, turns each into one row of the table for
its object type (``email``, ``push``, ``sms``, ``in_app``, ``slack``, ``webhook``,
``whatsapp``, ``customer``, and ``other`` for object types the spec does not know), loads
them with dlt using ``merge`` on ``event_id`` (a retried delivery loads once), and marks the
records loaded in the spool only after dlt committed. A crash between the two reloads the
batch next time, and the merge dedupes it.

Columns: ``event_id``, ``object_type``, ``metric``, ``timestamp`` and ``received_at``
(timestamps), ``identifier_id``/``identifier_email``/``identifier_cio_id`` (the flattened
``identifiers``), every key of ``data`` as its own column with the type in :data:`COLUMN_TYPES`
(ids as integers, booleans, nested values as JSON), and ``raw``, the whole payload as JSON. A
key not seen before becomes a new column (dlt's schema evolution); a value whose type clashes
with an existing column goes to a ``<name>__v_<type>`` variant column instead of failing.

**One refused event never blocks the others.** When the warehouse refuses a batch for its
data (not for being busy or unreachable), the batch is split in halves, each half loaded on
its own, and a failing half split again, until the refused events stand alone. Every other
event loads (and is marked loaded) once; each refused one goes to the spool's quarantine with
the warehouse's error (:meth:`Spool.mark_rejected`) and is not tried again until released
(``lockgate webhooks load --retry-rejected``). The cost is paid only when a batch fails. When
nothing in the batch loads, a probe (re-loading the last event loaded before, a no-op under the
merge) tells a warehouse fault from bad events: if the probe fails too, nothing is quarantined
and the error is raised, the events staying in the queue.

Example::

    result = load_pending(project)          # every unloaded record, in batches
    result.loaded, result.tables, result.rejected
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson

from lockgate.console import Console, NullConsole
from lockgate.errors import (
    ConfigError,
    MissingDependencyError,
    SourceError,
    TerminalError,
    TransientError,
)
from lockgate.filelock import flock_waiting
from lockgate.project.loader import Project
from lockgate.project.models import (
    BigQuerySourceConfig,
    DuckDBSourceConfig,
    PostgresSourceConfig,
    SnowflakeSourceConfig,
    WebhooksConfig,
    resolve_env,
)
from lockgate.webhooks.schemas import check_event, may_hold_big_int, parse_json, table_for
from lockgate.webhooks.spool import BATCH_BYTES, Spool, SpoolRecord

if TYPE_CHECKING:
    from lockgate.sources.bigquery import BigQuerySettings

PIPELINE_NAME = "lockgate_webhooks"
KEEP_LOADED = 8 * 86400
"""Seconds loaded events stay in the spool: longer than Customer.io's 7 days of retries."""
PRUNE_EVERY = 3600.0
"""Seconds between prunes in ``serve``'s background loader."""

_TEXT = "text"
_BIGINT = "bigint"
_BOOL = "bool"
_JSON = "json"
_TS = "timestamp"

COLUMN_TYPES: dict[str, str] = {
    "event_id": _TEXT,
    "object_type": _TEXT,
    "metric": _TEXT,
    "timestamp": _TS,
    "received_at": _TS,
    "identifier_id": _TEXT,
    "identifier_email": _TEXT,
    "identifier_cio_id": _TEXT,
    "customer_id": _TEXT,
    "email_address": _TEXT,
    "delivery_id": _TEXT,
    "journey_id": _TEXT,
    "trigger_event_id": _TEXT,
    "campaign_id": _BIGINT,
    "action_id": _BIGINT,
    "parent_action_id": _BIGINT,
    "broadcast_id": _BIGINT,
    "trigger_id": _BIGINT,
    "newsletter_id": _BIGINT,
    "content_id": _BIGINT,
    "transactional_message_id": _BIGINT,
    "link_id": _BIGINT,
    "recipient": _TEXT,
    "subject": _TEXT,
    "href": _TEXT,
    "failure_message": _TEXT,
    "content": _TEXT,
    "tracked_response": _TEXT,
    "inbound_event_id": _TEXT,
    "to": _TEXT,
    "proxied": _BOOL,
    "prefetched": _BOOL,
    "synthetic": _BOOL,
    "machine": _BOOL,
    "recipients": _JSON,
    "headers": _JSON,
    "raw": _JSON,
    "raw_text": _TEXT,
}
"""Declared type of every known column; other keys get the type dlt infers."""

_ENVELOPE = ("event_id", "object_type", "metric", "timestamp", "received_at", "raw")


@dataclass(frozen=True)
class Rejected:
    """An event the warehouse refused, set aside in the spool's quarantine by this load."""

    event_id: str
    object_type: str | None
    metric: str | None
    received_at: float
    reason: str


@dataclass
class LoadResult:
    """What one :func:`load_pending` call did; ``quarantined`` counts every event in the
    quarantine after it (this load's ``rejected`` and earlier ones not yet retried)."""

    loaded: int = 0
    batches: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    quarantined: int = 0


def to_row(record: SpoolRecord) -> tuple[str, dict[str, Any]]:
    """The table and row for one spooled event.

    Never drops an event: a signed body that is not an event (the receiver keeps those, see
    :func:`~lockgate.webhooks.schemas.spool_key`) goes to ``other`` under its spool key, with
    its ``object_type`` and ``metric`` when they are strings and the body as received in
    ``raw`` (its JSON object or array) or ``raw_text`` (its text, when it is not JSON or a
    JSON scalar); a timestamp outside
    the datetime range (milliseconds sent as seconds) loads as null with the payload intact in
    ``raw``. An integer beyond 64 bits
    keeps its exact digits, as text (see :func:`_big_ints_as_text`).
    """
    received_at = datetime.fromtimestamp(record.received_at, UTC)
    doc: Any = None
    try:
        doc = parse_json(record.body)
        event = check_event(doc)
    except Exception:
        return "other", _not_an_event(record, doc, received_at)
    data = dict(event.data)
    identifiers = data.pop("identifiers", None)
    row: dict[str, Any] = {
        "event_id": event.event_id,
        "object_type": event.object_type,
        "metric": event.metric,
        "timestamp": _datetime(event.timestamp),
        "received_at": received_at,
    }
    if isinstance(identifiers, dict):
        for key, value in identifiers.items():
            row[f"identifier_{key}"] = value
    elif identifiers is not None:
        data["identifiers"] = identifiers
    # dlt folds `eventId`, `Event_ID` or `event id` into the column `event_id`, the merge key:
    # compare names as dlt will write them, and keep dlt's own `_dlt_*` columns out of reach
    taken = {_column_name(key) for key in (*row, *_ENVELOPE)}
    for key, value in data.items():
        column = _column_name(key)
        name = f"data_{key}" if column in taken or column.startswith("_dlt") else key
        taken.add(_column_name(name))
        if _beyond_bigint(value, COLUMN_TYPES.get(name) == _BIGINT):
            # no warehouse integer holds it and dlt would fail the whole batch on it: keep it
            # as text in the variant column a type clash would use (and in full in `raw`)
            name, value = f"{name}__v_text", str(value)
        row[name] = value
    row["raw"] = doc
    if may_hold_big_int(record.body):  # a scan of the bytes; the walk only when it says so
        row = {name: _big_ints_as_text(value) for name, value in row.items()}
    return table_for(event.object_type, event.metric, event.data), row


def _not_an_event(record: SpoolRecord, doc: Any, received_at: datetime) -> dict[str, Any]:
    """The ``other`` row of a stored body that is not an event."""
    row: dict[str, Any] = {"event_id": record.event_id, "received_at": received_at}
    if isinstance(doc, dict):
        for key in ("object_type", "metric"):
            if isinstance(doc.get(key), str):
                row[key] = doc[key]
    if not isinstance(doc, dict | list):
        # not JSON, or a JSON scalar: dlt puts a scalar in the JSON column into a variant
        # column of its type (`raw__v_text`, `raw__v_bigint`, ...), so its text goes here
        row["raw_text"] = record.body.decode("utf-8", "replace")
    else:
        row["raw"] = _big_ints_as_text(doc) if may_hold_big_int(record.body) else doc
    return row


@lru_cache(maxsize=4096)
def _column_name(key: str) -> str:
    """The column name dlt gives a row key (its default ``snake_case`` naming)."""
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    if not key or key.isspace():  # dlt names these `_empty`
        return key
    return NamingConvention().normalize_path(key)


def _beyond_bigint(value: Any, bigint_column: bool) -> bool:
    """Whether ``value`` is an integer outside the 64-bit range (also as an integral float
    or a numeric string, which dlt turns into an integer for a bigint column)."""
    if isinstance(value, bool):
        return False
    number: int
    if isinstance(value, int):
        number = value
    elif bigint_column and isinstance(value, float) and value.is_integer():
        number = int(value)
    elif bigint_column and isinstance(value, str):
        text = value.strip()
        try:
            number = int(text[2:], 16) if text.startswith("0x") else int(text)
        except ValueError:
            return False
    else:
        return False
    return not -(2**63) <= number < 2**63


_JSON_INTS = range(-(2**63), 2**64)
"""The integers dlt's JSON (orjson) can write; it refuses any other, failing the load."""


def _big_ints_as_text(value: Any) -> Any:
    """``value`` with every integer dlt's JSON cannot write turned into a string of its exact
    digits: in ``raw``, nested values and identifiers. dlt's JSON (orjson) has no integers
    beyond 64 bits and reads a JSON number back as a float, so a string is the only way the
    digits reach the warehouse; the spool keeps the body byte for byte."""
    if isinstance(value, int):
        return value if value in _JSON_INTS else str(value)
    if isinstance(value, dict):
        return {k: _big_ints_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_big_ints_as_text(v) for v in value]
    return value


def _datetime(seconds: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _columns(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    present: set[str] = set()
    for row in rows:
        present.update(row)
    columns: dict[str, dict[str, Any]] = {}
    for name in sorted(present):
        data_type = COLUMN_TYPES.get(name)
        if data_type is None:
            continue
        hint: dict[str, Any] = {"data_type": data_type, "nullable": name != "event_id"}
        if data_type == _TS:
            hint["timezone"] = True
        columns[name] = hint
    return columns


# ---------------------------------------------------------------------------- destinations


def warehouse_name(project: Project) -> str:
    """The source the events load into: ``webhooks.warehouse`` or the first DuckDB/Postgres."""
    config = project.config.webhooks or WebhooksConfig()
    if config.warehouse is not None:
        if config.warehouse not in project.config.sources:
            raise ConfigError(
                f"`webhooks.warehouse` names source `{config.warehouse}`, which is not declared",
                hint=f"declared sources: {', '.join(sorted(project.config.sources))}",
                file="lockgate.yml",
            )
        return config.warehouse
    for name, source in project.config.sources.items():
        if isinstance(source, DuckDBSourceConfig | PostgresSourceConfig):
            return name
    raise ConfigError(
        "no DuckDB or Postgres source to load webhook events into",
        hint="set `webhooks.warehouse` in lockgate.yml to the source to load into",
        file="lockgate.yml",
    )


def _quiet_dlt() -> None:
    """Turn off dlt's anonymous usage telemetry unless the user set it: Lockgate users did not
    opt in to a dependency phoning home, and receivers often run without outbound network."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")


def destination_for(project: Project) -> tuple[Any, Path | None]:
    """The dlt destination for the project's webhook warehouse, and the DuckDB file if any."""
    _quiet_dlt()
    try:
        import dlt  # noqa: F401
    except ImportError:
        raise MissingDependencyError("dlt", "webhooks") from None
    from dlt import destinations

    name = warehouse_name(project)
    source = project.config.sources[name]
    if isinstance(source, DuckDBSourceConfig):
        if source.path == ":memory:":
            raise ConfigError(
                f"source `{name}` is an in-memory DuckDB; webhook events need a file",
                hint="give the source a `path`, or set `webhooks.warehouse`",
                file="lockgate.yml",
            )
        path = project.path_option(source.path, "sources", name, "path")
        return destinations.duckdb(credentials=str(path)), path
    if isinstance(source, PostgresSourceConfig):
        url = resolve_env(source.url, field=f"sources.{name}.url", at=source) or ""
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise MissingDependencyError("psycopg2-binary", "webhooks") from None
        from dlt.destinations.impl.postgres.configuration import PostgresCredentials

        pg = PostgresCredentials()
        pg.parse_native_representation(url)
        if pg.password is None:  # trust/peer auth: dlt insists on a password field
            pg.password = ""
        return destinations.postgres(credentials=pg), None
    if isinstance(source, SnowflakeSourceConfig):
        return destinations.snowflake(
            credentials=_snowflake_credentials(source, root=project.root, name=name)
        ), None
    if isinstance(source, BigQuerySourceConfig):
        dataset = (project.config.webhooks or WebhooksConfig()).dataset
        credentials, location = _bigquery_credentials(
            source, root=project.root, name=name, dataset=dataset
        )
        # no location: dlt's own setting decides (`DESTINATION__BIGQUERY__LOCATION`, else US)
        if location is None:
            return destinations.bigquery(credentials=credentials), None
        return destinations.bigquery(credentials=credentials, location=location), None
    raise ConfigError(f"source `{name}` cannot take webhook events", file="lockgate.yml")


_SNOWFLAKE_FIELDS = ("warehouse", "role", "authenticator", "token")
"""Connector arguments dlt's Snowflake credentials hold as fields of their own (its login
checks read them); every other one goes to the connector through their `query`."""


def _snowflake_credentials(source: SnowflakeSourceConfig, *, root: Path, name: str) -> Any:
    """dlt's Snowflake credentials carrying the very arguments the Snowflake source connects
    with (:meth:`SnowflakeSource.connect_args`): the same login (password, key from a file or
    the environment, decrypted with its passphrase, or OAuth token), database, warehouse and
    role, `${ENV}` references resolved. dlt picks the schema (`webhooks.dataset`)."""
    from dlt.destinations.impl.snowflake.configuration import SnowflakeCredentials

    from lockgate.sources.snowflake import SnowflakeSource

    args = SnowflakeSource.connect_args(source, root=root, name=name)
    args.pop("schema", None)
    credentials = SnowflakeCredentials()
    credentials.host = args.pop("account")
    credentials.username = args.pop("user")
    credentials.password = args.pop("password", None)
    credentials.database = args.pop("database", None)
    key = args.pop("private_key", None)
    if key is not None:  # unencrypted DER; dlt's field takes it in base64
        credentials.private_key = base64.b64encode(key).decode()
    for key_name in _SNOWFLAKE_FIELDS:
        if key_name in args:
            setattr(credentials, key_name, args.pop(key_name))
    credentials.query = args
    credentials.application = "lockgate"
    return credentials.resolve()


def _bigquery_credentials(
    source: BigQuerySourceConfig, *, root: Path, name: str, dataset: str
) -> tuple[Any, str | None]:
    """dlt's BigQuery credentials and location for a BigQuery source, from the settings the
    source reads with (:func:`lockgate.sources.bigquery.settings_for`): its `project`, the
    service-account key of `credentials_path` or else Application Default Credentials.

    The location is the source's `location` when set; else that of the webhook ``dataset``
    where it exists (BigQuery runs a load where its dataset is: one sent to another location
    fails), else that of the source's `dataset` (a new webhook dataset goes next to the models
    that read it: BigQuery joins no two locations), else None: dlt's own setting
    (`DESTINATION__BIGQUERY__LOCATION`), by default `US`."""
    from dlt.common.configuration.specs import GcpServiceAccountCredentials

    from lockgate.sources.bigquery import settings_for

    settings = settings_for(source, root=root, name=name)
    credentials = GcpServiceAccountCredentials()
    if settings.credentials is not None:
        credentials.parse_native_representation(settings.credentials)
    credentials.project_id = settings.project
    if settings.location:
        return credentials, settings.location
    return credentials, _bigquery_location(settings, name, dataset)


def _bigquery_location(settings: BigQuerySettings, name: str, dataset: str) -> str | None:
    """The location of the first of the webhook ``dataset`` and the source's `dataset` that
    exists (one request each, at most two), or None when neither does."""
    import requests
    from google.api_core import exceptions
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.bigquery import DEFAULT_RETRY

    from lockgate.sources.base import db_message, label
    from lockgate.sources.bigquery import BigQuerySource, client_for

    client = client_for(settings, name=name)
    # a minute of retries at most, not the client's ten: a load of the next interval tries again
    retry = DEFAULT_RETRY.with_deadline(60)
    try:
        for wanted in dict.fromkeys(d for d in (dataset, settings.dataset) if d):
            try:
                return cast(str, client.get_dataset(wanted, retry=retry, timeout=30).location)
            except exceptions.NotFound:
                continue
        return None
    # a refusal, the network, the login: the load could not run either
    except (exceptions.GoogleAPIError, GoogleAuthError, requests.RequestException) as exc:
        raise SourceError(
            f"{label(BigQuerySource.NAME, name)}: cannot look up the location of dataset "
            f"`{dataset}` for webhook events: {db_message(exc)}",
            hint=f"set `location` on source `{name}` in lockgate.yml (e.g. `EU`) to skip the "
            "lookup, or let the credentials read the dataset (roles/bigquery.metadataViewer)",
        ) from exc
    finally:
        client.close()


#: the in-memory DuckDB instance :func:`_wait_for_duckdb` attaches the warehouse file to, to
#: see whether another process holds it (an attach and detach is ~0.5 ms; starting an
#: instance to open the file, ~20 ms of every load), and the lock that keeps one probe at a
#: time on it (the background loader and a `load` in another thread of a host)
_PROBE: list[Any] = []
_PROBE_LOCK = threading.Lock()


def _probe(path: Path) -> None:
    """Open ``path`` for writing and let it go, as the load will (it is created when missing,
    as dlt would); raises DuckDB's error when it cannot be."""
    import duckdb

    from lockgate.sources.base import quote_literal

    with _PROBE_LOCK:
        if not _PROBE:
            _PROBE.append(duckdb.connect(":memory:"))
        probe = _PROBE[0]
        probe.execute(f"attach {quote_literal(str(path))} as lockgate_probe")
        try:
            probe.execute("detach lockgate_probe")
        except duckdb.Error:  # the file must not stay held: the instance goes, and with it
            _PROBE.clear()  # the file
            with contextlib.suppress(duckdb.Error):
                probe.close()


def _wait_for_duckdb(path: Path, *, wait: float) -> None:
    """Wait until no other process holds the DuckDB file (DuckDB is single-writer per file).
    A file DuckDB cannot open for another reason (not a DuckDB database, damaged, a folder)
    is said at once: waiting would not change it, and it is not in use."""
    import duckdb

    from lockgate.sources.base import lock_held

    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        try:
            _probe(path)
            return
        except duckdb.IOException as exc:
            if not lock_held(exc):
                raise TerminalError(
                    f"cannot open the DuckDB file `{path}` to load webhook events: {exc}",
                    hint="the events stay in the spool; restore the file from a backup or "
                    "move it aside (a new one is created), then run `lockgate webhooks load`",
                ) from None
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"the DuckDB file `{path.name}` is in use by another process ({exc})",
                    hint="a sync or another tool holds it; the events stay in the spool, "
                    "run `lockgate webhooks load` again when it is done",
                ) from None
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


# ---------------------------------------------------------------------------- loading


def load_pending(
    project: Project,
    *,
    spool: Spool | None = None,
    batch_size: int = 10_000,
    batch_bytes: int = BATCH_BYTES,
    wait: float = 30.0,
    console: Console | None = None,
) -> LoadResult:
    """Load every unloaded spool record into the warehouse; return the counts.

    Raises :class:`~lockgate.errors.TransientError` when the DuckDB file stays busy for
    ``wait`` seconds, and :class:`~lockgate.errors.SourceError` when dlt fails; in both cases
    the records stay unloaded for the next run.
    """
    _quiet_dlt()
    try:
        import dlt
    except ImportError:
        raise MissingDependencyError("dlt", "webhooks") from None

    console = console or NullConsole()
    config = project.config.webhooks or WebhooksConfig()
    own_spool = spool is None
    spool = spool or Spool(project.spool_dir)
    destination, duckdb_path = destination_for(project)
    # DuckDB reads parquet natively: several times faster than dlt's default INSERT statements
    file_format: Any = "parquet" if duckdb_path is not None else None
    # Postgres text and jsonb cannot hold U+0000: one such string would fail every load
    no_nul = getattr(destination, "destination_name", None) == "postgres"
    result = LoadResult()
    lock: int | None = None
    try:
        # one loader at a time: two share dlt's working folder and abort each other's packages
        lock = _take_load_lock(project.state_dir / "dlt", wait=wait)
        pipeline = dlt.pipeline(
            pipeline_name=PIPELINE_NAME,
            destination=destination,
            dataset_name=config.dataset,
            pipelines_dir=str(project.state_dir / "dlt"),
        )
        batch_loader = _BatchLoader(
            pipeline,
            spool,
            result,
            file_format=file_format,
            no_nul=no_nul,
            wait=wait,
            duckdb_path=duckdb_path,
            console=console,
        )
        while True:
            records = spool.unloaded(batch_size, max_bytes=batch_bytes)
            if not records:
                break
            loaded = result.loaded
            batch_loader.load(records)
            result.batches += 1
            console.info(f"loaded {result.loaded - loaded} webhook events into `{config.dataset}`")
        result.quarantined = spool.stats().rejected
    finally:
        if lock is not None:
            os.close(lock)  # releases the lock
        if own_spool:
            spool.close()
    return result


@dataclass
class _BatchLoader:
    """Loads one batch of spool records; on a refusal, isolates the refused events."""

    pipeline: Any
    spool: Spool
    result: LoadResult
    file_format: Any
    no_nul: bool
    wait: float
    duckdb_path: Path | None
    console: Console

    def load(self, records: list[SpoolRecord]) -> None:
        """Load ``records``; mark each loaded or rejected. Raises on a warehouse fault."""
        try:
            tables = self._try(records)
        except SourceError as exc:
            self._isolate(records, exc)
        else:
            self._loaded(records, tables)

    def _try(self, records: list[SpoolRecord]) -> dict[str, int]:
        """One dlt run for ``records``; raise :class:`SourceError` if the warehouse refused
        the data and :class:`TransientError` if it is busy or unreachable."""
        import dlt

        by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            table, row = to_row(record)
            by_table[table].append(_without_nul(row) if self.no_nul else row)
        if self.duckdb_path is not None:
            _wait_for_duckdb(self.duckdb_path, wait=self.wait)
        if self.pipeline.has_pending_data:
            # a package left by an earlier failed or killed load; dlt would load it and
            # ignore the new data. Its events are still unloaded in the spool and part of
            # this batch (or loaded already), so drop it (the merge on event_id dedupes).
            self.pipeline.abort_packages()
        resources = [
            dlt.resource(
                rows,
                name=table,
                write_disposition="merge",
                primary_key="event_id",
                columns=cast(Any, _columns(rows)),
                max_table_nesting=0,
            )
            for table, rows in sorted(by_table.items())
        ]
        try:
            with _dlt_errors_silenced():
                self.pipeline.run(resources, loader_file_format=self.file_format)
        except Exception as exc:
            raise _load_error(exc, self.duckdb_path) from exc
        return {table: len(rows) for table, rows in by_table.items()}

    def _loaded(self, records: list[SpoolRecord], tables: dict[str, int]) -> None:
        self.spool.mark_loaded([r.seq for r in records])
        for table, count in tables.items():
            self.result.tables[table] = self.result.tables.get(table, 0) + count
            self.result.loaded += count

    def _isolate(self, records: list[SpoolRecord], error: SourceError) -> None:
        """Split the failed batch until each refused event stands alone; load the rest."""
        refused: list[tuple[SpoolRecord, SourceError]] = []
        any_loaded = False
        # (records, known to fail with this error or None to try them first)
        todo: list[tuple[list[SpoolRecord], SourceError | None]] = [(records, error)]
        while todo:
            part, failed = todo.pop()
            if failed is None:
                try:
                    tables = self._try(part)
                except SourceError as exc:
                    failed = exc
                else:
                    self._loaded(part, tables)
                    any_loaded = True
                    continue
            if len(part) == 1:
                if any_loaded:  # the warehouse works: set it aside now
                    self._reject(part[0], failed)
                else:
                    refused.append((part[0], failed))
                continue
            middle = len(part) // 2
            # the first half is tried first (stack order); the second is tried too, even if
            # the first loaded: events can fail together and not alone
            todo.append((part[middle:], None))
            todo.append((part[:middle], None))
        if not refused:
            return
        if not any_loaded and not self._probe():
            # nothing loads, not even an event loaded before: the warehouse is at fault
            raise error
        for record, why in refused:
            self._reject(record, why)

    def _probe(self) -> bool:
        """Whether the warehouse takes an event it took before (a no-op under the merge)."""
        record = self.spool.last_loaded()
        if record is None:
            return False
        try:
            self._try([record])
        except SourceError:
            return False
        return True

    def _reject(self, record: SpoolRecord, error: SourceError) -> None:
        reason = _reason(error)
        self.spool.mark_rejected(record.seq, reason)
        object_type = metric = None
        try:
            doc = parse_json(record.body)
            if isinstance(doc, dict):
                object_type = doc.get("object_type")
                metric = doc.get("metric")
        except orjson.JSONDecodeError:
            pass
        self.result.rejected.append(
            Rejected(
                record.event_id,
                object_type if isinstance(object_type, str) else None,
                metric if isinstance(metric, str) else None,
                record.received_at,
                reason,
            )
        )
        self.console.warn(
            f"webhook event `{record.event_id}` set aside: the warehouse refused it ({reason}); "
            "fix the cause and run `lockgate webhooks load --retry-rejected`"
        )


MAX_REASON = 2000


_SQL_EXCERPT = re.compile(r"LINE \d+:|\s*\^+\s*$")
"""The lines DuckDB and Postgres add under an error to point into the failed statement."""


def _reason(error: BaseException) -> str:
    """The warehouse's own words for a refusal: the innermost cause's message, without the
    excerpt of dlt's SQL that DuckDB and Postgres add under it (``LINE 2: ... _dlt_dedup_rn``
    says nothing about the event)."""
    inner: BaseException = error
    while True:
        cause = inner.__cause__ or inner.__context__
        if cause is None:
            break
        inner = cause
    lines = [line for line in str(inner).splitlines() if not _SQL_EXCERPT.match(line)]
    text = " ".join(" ".join(lines).split()) or type(inner).__name__
    return f"{type(inner).__name__}: {text}"[:MAX_REASON]


class _DropErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


@contextlib.contextmanager
def _dlt_errors_silenced() -> Iterator[None]:
    """Keep dlt's ERROR records (a full traceback per failed job) off stderr during a load.

    Every failure of a load is Lockgate's to report: the error raised names the cause, and an
    event the warehouse refuses gets one warning when it is set aside. Without this, each try
    of the split that isolates one refused event printed dlt's tracebacks (hundreds of lines).
    dlt's warnings still show.
    """
    from dlt.common import logger as dlt_logger

    loggers = {logging.getLogger("dlt")}
    if dlt_logger.LOGGER is not None and dlt_logger.LOGGER is not logging.getLogger():
        loggers.add(dlt_logger.LOGGER)
    drop = _DropErrors()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def _take_load_lock(folder: Path, *, wait: float) -> int:
    """Lock ``folder``'s pipeline for this process (a file descriptor; close it to release)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{PIPELINE_NAME}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    if flock_waiting(fd, wait, poll=0.05):
        return fd
    os.close(fd)
    raise TransientError(
        "another webhook load of this project is still running",
        hint="the events stay in the spool; run `lockgate webhooks load` again when it is done",
    )


def _without_nul(value: Any) -> Any:
    """``value`` with every U+0000 in its strings and keys replaced by U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _load_error(exc: Exception, duckdb_path: Path | None) -> Exception:
    from dlt.common.destination.exceptions import DestinationTransientException

    from lockgate.sources.base import lock_held

    cause: BaseException | None = exc
    while cause is not None:
        if duckdb_path is not None and type(cause).__name__ == "IOException":
            # the file, not the events: never a reason to set any of them aside
            if lock_held(cause):
                return TransientError(
                    f"the DuckDB file `{duckdb_path.name}` is in use by another process",
                    hint="the events stay in the spool; run `lockgate webhooks load` again later",
                )
            return TransientError(
                f"the DuckDB file `{duckdb_path.name}` could not be written: {cause}",
                hint="the events stay in the spool; free disk space or fix the file's "
                "permissions, then run `lockgate webhooks load` again",
            )
        if isinstance(cause, DestinationTransientException) or type(cause).__name__ in (
            "OperationalError",  # psycopg2: connection lost, server down, disk full
            "InterfaceError",
        ):
            # not the events' fault: never a reason to set any of them aside
            return TransientError(
                f"the warehouse could not be reached to load webhook events: {cause}",
                hint="the events stay in the spool; run `lockgate webhooks load` again later",
            )
        cause = cause.__cause__ or cause.__context__
    return SourceError(
        f"loading webhook events failed: {exc}",
        hint="the events stay in the spool; fix the cause and run `lockgate webhooks load`",
    )


def prune_spool(spool: Spool) -> int:
    """Delete events loaded more than :data:`KEEP_LOADED` seconds ago; return how many.

    ``serve``'s background loader calls it every :data:`PRUNE_EVERY` seconds and
    ``lockgate webhooks load`` after each load, so a receiver run with ``--no-load`` does not
    keep every event forever. Quarantined events are never pruned.
    """
    return spool.prune(KEEP_LOADED)


class BackgroundLoader:
    """Loads the spool every ``interval`` seconds on a thread, while ``serve`` accepts.

    Failures (a busy DuckDB file, a warehouse down) are reported to the console and retried
    at the next interval; the events wait in the spool meanwhile.

    Example::

        loader = BackgroundLoader(project, interval=5.0, console=console)
        loader.start()
        ...
        loader.stop()       # runs one last load
    """

    def __init__(
        self, project: Project, *, interval: float = 5.0, console: Console | None = None
    ) -> None:
        import threading

        self.project = project
        self.interval = interval
        self.console = console or NullConsole()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks-loader", daemon=True)
        self._spool_dir = project.spool_dir

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        spool = Spool(self._spool_dir)
        pruned_at = 0.0
        try:
            while True:
                stopping = self._stop.wait(self.interval)
                try:
                    if spool.stats().unloaded:
                        load_pending(self.project, spool=spool, console=self.console)
                    if time.monotonic() - pruned_at > PRUNE_EVERY:
                        prune_spool(spool)
                        pruned_at = time.monotonic()
                except Exception as exc:
                    self.console.warn(f"webhook load failed, will retry: {exc}")
                if stopping:
                    return
        finally:
            spool.close()
