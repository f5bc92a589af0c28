"""`lockgate validate --connect`: can every part of the project be reached, with the
credentials a sync will use, before anything runs?

A user setting up a project (or rotating a key, or moving a model) wants to know now, not
from a failed nightly run, that the warehouse answers, that each sync's model still has the
columns its sync file maps, and that Customer.io takes the credentials (the "Test connection"
of Hightouch and Census, dbt's `debug`). Every check stands alone: one failing does not hide
the others, and each failure carries the error and hint a run would give.

- **source**: the warehouse connects and plans `select 1` (the permission every sync needs).
- **model**: each sync's model is planned with no rows read (`LIMIT 0`, a BigQuery dry run),
  and the sync's mapping is compiled against the columns and types it returns, as a run
  does: a column the sync file names that the model lacks fails. (A value its type cannot
  carry is a row-level reject in a run, not a check here: no rows are read.)
- **identity source**: each identity source's table or query is planned the same way.
- **Track API**: `GET /api/v1/accounts/region` with the Track credentials (it answers 401 for
  wrong ones, and says which region the workspace is in, compared with the one configured,
  even behind a `track_url` override: the region also picks the App API's host).
- **App API**: `GET /v1/workspaces` with the App API key, when one is set (`lockgate
  reconcile` needs it; syncs do not).
- **webhooks** (when lockgate.yml has a `webhooks:` section): the signing key's variable is
  set, the warehouse the events load into is declared and connected above, and the spool
  folder can be written.
- **run log** (when lockgate.yml has a `run_log:` section): its warehouse connected above and
  the tables can be created there: a DuckDB file (or its folder) the user can write; in
  Postgres, CREATE on the schema if it exists, else on the database. Snowflake's grants are
  not read: the first run's write says whether they are enough.

Nothing is written anywhere, no state is opened, and no row is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import duckdb
import httpx
import pyarrow as pa

from lockgate.errors import ConfigError, LockgateError
from lockgate.project.loader import Project
from lockgate.project.models import SyncConfig
from lockgate.sources import connect
from lockgate.sources.base import Source, redact
from lockgate.sync import mapping
from lockgate.sync.extract import Carry, model_types, staged_types, unique_columns

if TYPE_CHECKING:
    import ssl

    from lockgate.destinations.customerio.settings import CustomerIOSettings

TIMEOUT = 10.0
"""Seconds for each request to Customer.io."""


@dataclass(frozen=True)
class Check:
    """One thing checked: ``ok`` is None when it was skipped (not configured, or what it
    needs failed first)."""

    what: str  # source | model | identity source | Track API | App API
    name: str
    ok: bool | None
    detail: str
    hint: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _located(exc: LockgateError) -> str:
    """An error's reason after its `file:line` when it has one (lockgate.yml's)."""
    where = getattr(exc, "location", None)
    return f"{where}: {exc.reason}" if where else exc.reason


class _Checks:
    def __init__(self, advance: Callable[[int], None]) -> None:
        self.done: list[Check] = []
        self.advance = advance

    @contextmanager
    def check(self, what: str, name: str) -> Iterator[list[str]]:
        """Run one check: the block appends its detail to the yielded list; an exception is
        the check's failure (a Lockgate error with its hint, anything else as its text)."""
        detail: list[str] = []
        start = time.perf_counter()
        try:
            yield detail
        except LockgateError as exc:
            self._add(
                Check(what, name, False, _located(exc), exc.hint, time.perf_counter() - start)
            )
        except Exception as exc:  # a driver's own error: its text, never a credential
            text = redact(f"{type(exc).__name__}: {exc}")
            self._add(Check(what, name, False, text, None, time.perf_counter() - start))
        else:
            self._add(Check(what, name, True, "; ".join(detail), None, time.perf_counter() - start))

    def fail(self, what: str, name: str, exc: LockgateError) -> None:
        self._add(Check(what, name, False, _located(exc), exc.hint))

    def skip(self, what: str, name: str, why: str, hint: str | None = None) -> None:
        self._add(Check(what, name, None, why, hint))

    def _add(self, check: Check) -> None:
        self.done.append(check)
        self.advance(1)


def count(project: Project) -> int:
    """How many checks :func:`check_connections` makes (for a progress bar)."""
    identity = project.config.identity
    used = {s.destination for s in project}
    return (
        len(project.config.sources)
        + len(project.syncs)
        + (len(identity.sources) if identity is not None else 0)
        + 2 * len(used)
        + (project.config.webhooks is not None)
        + (project.config.run_log is not None)
    )


def check_connections(
    project: Project, advance: Callable[[int], None] = lambda n: None
) -> list[Check]:
    """Check every source, model, identity source and Customer.io destination the project
    uses; see the module's docstring."""
    checks = _Checks(advance)
    _check_sources(project, checks)
    for name in sorted({s.destination for s in project}):
        _check_customerio(project, name, checks)
    if project.config.webhooks is not None:
        with checks.check("webhooks", "receiver") as detail:
            detail.append(_check_webhooks(project, checks.done))
    if project.config.run_log is not None:
        with checks.check("run log", "run_log") as detail:
            detail.append(_check_run_log(project, checks.done))
    return checks.done


def _check_sources(project: Project, checks: _Checks) -> None:
    identity = project.config.identity
    queries: dict[str, list[tuple[str, str]]] = {}
    if identity is not None:
        from lockgate.sync import resolve

        try:
            for warehouse, specs in resolve.identity_queries(project, identity).items():
                queries[warehouse] = [(spec.name, sql) for spec, sql in specs]
        except LockgateError as exc:  # an identity source naming a warehouse never declared
            checks.fail("identity source", "identity.sources", exc)
    for warehouse, config in sorted(project.config.sources.items()):
        source: Source | None = None
        with checks.check("source", warehouse) as detail:
            source = connect(config, root=project.root, name=warehouse)
            # what every sync needs anyway (on BigQuery a dry run: a job, not a dataset list)
            source.schema_of("select 1 as lockgate_check")
            detail.append(f"{config.type}: connected")
        connected = checks.done[-1].ok
        try:
            for sync in sorted((s for s in project if s.source == warehouse), key=lambda s: s.name):
                if source is None or not connected:
                    checks.skip("model", sync.name, f"source `{warehouse}` did not connect")
                    continue
                with checks.check("model", sync.name) as detail:
                    detail.append(_check_model(project, sync, source))
            for spec_name, sql in queries.get(warehouse, []):
                if source is None or not connected:
                    checks.skip(
                        "identity source", spec_name, f"source `{warehouse}` did not connect"
                    )
                    continue
                with checks.check("identity source", spec_name) as detail:
                    detail.append(_columns(len(source.schema_of(sql))))
        finally:
            if source is not None:
                source.close()


def _check_model(project: Project, sync: SyncConfig, source: Source) -> str:
    """Plan the model (no rows) and compile the sync's mapping against its columns."""
    sql = project.model_sql(sync)
    schema = source.schema_of(sql)
    try:
        unique_columns(schema.names, sync=sync.name, warehouse=source.NAME)
    except ConfigError as exc:
        raise project.locate(exc, sync.name, ("model",)) from None
    columns = duckdb_types(schema, model_types(source, sql))
    mapped = sync
    if mapping.needs_identity(project, sync):
        from lockgate.identity.customerio import attribute_names
        from lockgate.sync import resolve

        config = resolve.identity_config(project, sync)
        for clash in resolve.model_collisions(
            sync, list(columns), project.sync_files.get(sync.name)
        ):
            del columns[clash]
        resolve.require_columns(sync, list(columns))
        graph = {}
        if sync.kind == "people":
            graph = {
                name: resolve.graph_attribute_column(name)
                for name in attribute_names(config)
                if name not in sync.attributes
            }
        columns = {**columns, **dict.fromkeys(resolve.graph_columns_added(graph), "VARCHAR")}
        mapped = resolve.keyed_sync(sync, graph)
    try:
        mapping.compile_sync(mapped, columns, project.config.defaults.on_null, int(time.time()))
    except ConfigError as exc:
        raise project.locate(exc, sync.name) from None
    # as `plan` says it: naive timestamps read as UTC when no `timezone` is set
    naive = mapping.naive_note(mapped, columns)
    return f"{_columns(len(schema))}; the mapping compiles ({sync.kind})" + (
        f"; {naive}" if naive else ""
    )


def _columns(n: int) -> str:
    return f"{n:,} column{'' if n == 1 else 's'}"


def duckdb_types(schema: pa.Schema, native: dict[str, str] | None = None) -> dict[str, str]:
    """Column name -> the DuckDB type a run stages it as (Arrow into DuckDB, as extraction);
    ``native``: a DuckDB model's own column types (see :class:`~lockgate.sync.extract.Carry`)."""
    con = duckdb.connect()
    try:
        return staged_types(con, schema, Carry.of(native) if native else None)
    finally:
        con.close()


def _check_webhooks(project: Project, done: list[Check]) -> str:
    """The receiver's signing key, warehouse and spool folder (see the module docstring)."""
    import os

    from lockgate.errors import ConfigError
    from lockgate.webhooks.load import warehouse_name
    from lockgate.webhooks.verify import signing_key

    config = project.config.webhooks
    assert config is not None
    signing_key(config)  # a variable not set or empty is a ConfigError naming it
    warehouse = warehouse_name(project)
    _require_connected(done, warehouse, "the events load into", "webhooks.warehouse")
    spool = project.spool_dir
    existing = next(p for p in (spool, *spool.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"the spool folder `{spool}` cannot be written (`{existing}` is not writable)",
            hint="give the receiver's user write access, or set `webhooks.spool` elsewhere",
        )
    return f"signing key set; loads into `{warehouse}`.{config.dataset}; spool `{spool}`"


def _require_connected(done: list[Check], warehouse: str, what: str, key: str) -> None:
    """A check that writes into ``warehouse`` fails, naming ``key``, when its source did not
    connect (its own check, above, says why)."""
    from lockgate.errors import ConfigError

    if any(c.what == "source" and c.name == warehouse and c.ok is False for c in done):
        raise ConfigError(
            f"{what} source `{warehouse}`, which did not connect (above)",
            hint=f"fix the source, or point `{key}` at another one",
        )


def _check_run_log(project: Project, done: list[Check]) -> str:
    """Can the run log's tables be created where `run_log:` writes them? Nothing is written."""
    import os

    from lockgate.errors import ConfigError
    from lockgate.project.loader import run_log_warehouse
    from lockgate.project.models import DuckDBSourceConfig, PostgresSourceConfig, resolve_env

    config = project.config.run_log
    assert config is not None
    warehouse = run_log_warehouse(project)
    _require_connected(done, warehouse, "the run log goes to", "run_log.warehouse")
    where = f"`{warehouse}`.{config.dataset}"
    source = project.config.sources[warehouse]
    if isinstance(source, DuckDBSourceConfig):
        path = project.path_option(source.path, "sources", warehouse, "path")
        target = path if path.exists() else path.parent
        if not os.access(target, os.W_OK):
            raise ConfigError(
                f"the run log cannot be written: `{target}` is not writable by this user",
                hint="give the user write access to the warehouse file, or set "
                "`run_log.warehouse` to another source",
            )
        return f"writes {where} (a DuckDB file this user can write)"
    if isinstance(source, PostgresSourceConfig):
        import psycopg  # Postgres and Redshift alike (ADBC does not speak to Redshift)

        from lockgate.sources.base import quote_literal

        schema = quote_literal(config.dataset)
        with psycopg.connect(resolve_env(source.url, field="url", at=source) or "") as conn:
            user, allowed = conn.execute(
                "select current_user, case when exists (select 1 from pg_namespace where nspname"
                f" = {schema}) then has_schema_privilege({schema}, 'CREATE') else "
                "has_database_privilege(current_database(), 'CREATE') end"
            ).fetchall()[0]
        if not allowed:
            raise ConfigError(
                f"the run log cannot be written: user `{user}` may not create tables in "
                f"schema `{config.dataset}` (nor the schema)",
                hint=f"grant CREATE on schema {config.dataset} (or on the database) to {user}, "
                "or set `run_log.warehouse` to another source",
            )
        return f"writes {where} (user `{user}` may create its tables)"
    return f"writes {where} (grants not read: the first run's write checks them)"


def _check_customerio(project: Project, name: str, checks: _Checks) -> None:
    from lockgate.destinations.customerio.settings import tls_verify
    from lockgate.sync.run import destination_settings

    try:
        settings = destination_settings(project, name)
    except LockgateError as exc:  # a credential's variable is not set
        checks.fail("Track API", name, exc)
        checks.skip("App API", name, "the destination's settings did not load")
        return
    with checks.check("Track API", name) as detail:
        detail.append(_check_track(settings))
    from lockgate.sync.reconcile import app_settings

    try:  # read-back resolves its URL and key as `lockgate reconcile` does
        app = app_settings(project, next(s for s in project if s.destination == name))
    except LockgateError:  # CUSTOMERIO_APP_API_KEY is not set
        app = None
    if app is None or not app.app_api_key:
        checks.skip(
            "App API",
            name,
            "no App API key set; syncs run without one, but read back no email change",
            hint="people syncs read back the emails they change, and `lockgate reconcile` "
            "every attribute, through the App API: set CUSTOMERIO_APP_API_KEY (Settings > API "
            "credentials > App API keys) to use it",
        )
        return
    with checks.check("App API", name) as detail:
        detail.append(_check_app(app, tls_verify(app.app_base)))


def _check_track(settings: CustomerIOSettings) -> str:
    from lockgate.destinations.customerio import region
    from lockgate.destinations.customerio.client import refused_credentials
    from lockgate.errors import DestinationAuthError, DestinationError

    url = settings.track_shown + region.REGION_PATH  # as messages show it
    if not settings.site_id or not settings.api_key:
        raise DestinationAuthError(
            "no Track API credentials", hint="set CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY"
        )
    try:
        answer = region.ask(settings, timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise DestinationError(
            f"cannot reach `{settings.track_shown}`: {type(exc).__name__}: {exc}",
            hint="check CUSTOMERIO_TRACK_URL (unset it to use the region's host), "
            "CUSTOMERIO_REGION, and the network or proxy between here and Customer.io",
        ) from exc
    status = answer.status_code
    if status in (401, 403):
        raise refused_credentials(status, settings.track_shown, checking=True)
    if 300 <= status < 400:
        raise DestinationError(
            f"`{url}` redirected (HTTP {status}) to `{answer.headers.get('location', '?')}`",
            status=status,
            hint="set CUSTOMERIO_REGION to your workspace's region (`us` or `eu`)",
        )
    if status != 200:
        raise DestinationError(
            f"`{url}` answered HTTP {status}: {answer.text[:200]}",
            status=status,
            hint="check CUSTOMERIO_TRACK_URL (unset it to use the region's host)",
        )
    found = region.workspace(answer)
    if found is None:
        raise DestinationError(
            f"`{url}` answered 200 with a body that is not Customer.io's: {answer.text[:200]}",
            hint="check CUSTOMERIO_TRACK_URL: it should point at Customer.io's Track API",
        )
    if found.region != settings.region:
        raise region.wrong_region(settings, found.region)
    return f"credentials accepted by workspace {found.id} (region {found.region})"


def _check_app(settings: CustomerIOSettings, verify: ssl.SSLContext | bool) -> str:
    from lockgate.errors import DestinationAuthError, DestinationError

    url = f"{settings.app_shown}/v1/workspaces"  # as messages show it
    try:
        answer = httpx.get(
            f"{settings.app_base}/v1/workspaces",
            headers={"Authorization": f"Bearer {settings.app_api_key}"},
            timeout=TIMEOUT,
            verify=verify,
        )
    except httpx.HTTPError as exc:
        raise DestinationError(
            f"cannot reach `{settings.app_shown}`: {type(exc).__name__}: {exc}",
            hint="check CUSTOMERIO_APP_URL (unset it to use the region's host) and the network",
        ) from exc
    if answer.status_code in (401, 403):
        raise DestinationAuthError(
            f"Customer.io refused the App API key (HTTP {answer.status_code}) at "
            f"`{settings.app_shown}`",
            status=answer.status_code,
            hint="check CUSTOMERIO_APP_API_KEY: an App API key (Settings > API credentials > "
            "App API keys), not a Track API key, of a workspace in CUSTOMERIO_REGION",
        )
    if answer.status_code != 200:
        raise DestinationError(
            f"`{url}` answered HTTP {answer.status_code}: {answer.text[:200]}",
            status=answer.status_code,
            hint="check CUSTOMERIO_APP_URL (unset it to use the region's host)",
        )
    try:
        workspaces = answer.json()["workspaces"]
        names = ", ".join(f"{w.get('name')} ({w.get('id')})" for w in workspaces)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DestinationError(
            f"`{url}` answered 200 with a body that is not Customer.io's: {answer.text[:200]}",
            hint="check CUSTOMERIO_APP_URL: it should point at Customer.io's App API",
        ) from exc
    return f"key accepted; workspaces: {names}"
