"""Pydantic models of the project files: `lockgate.yml` and one file per sync in `syncs/`.

Every model forbids unknown keys (a typo fails loudly) and documents each field with an
attribute docstring: `docs/config.md` is generated from them and a test fails when one is
missing. Secrets never appear as literal values: fields marked secret accept only
``${ENV_VAR}`` references, resolved when the value is used.

Example::

    project = ProjectConfig.model_validate({
        "name": "acme",
        "sources": {"warehouse": {"type": "duckdb", "path": "warehouse.duckdb"}},
        "destinations": {"customerio": {"type": "customerio"}},
    })
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from lockgate.errors import ConfigError, SourceError
from lockgate.project.identity import IdentityConfig

#: a sync's name: it names its state, its files' tables and the CLI's arguments
SYNC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
DURATION = re.compile(r"^(\d+)\s*(s|m|h|d)$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Place:
    """Where a block of lockgate.yml is, for the errors found after loading (a variable not
    set when a source connects): what it is (`source `warehouse``), its keys' path and the
    lines of the file's keys (:attr:`lockgate.project.loader.Project.lines`)."""

    what: str
    loc: tuple[str | int, ...]
    lines: Mapping[tuple[str | int, ...], int] = dataclass_field(compare=False, repr=False)
    file: str = "lockgate.yml"

    def line_of(self, key: str) -> int | None:
        """The line of ``key`` in the block, else of the block (a key left to its default)."""
        return self.lines.get((*self.loc, key)) or self.lines.get(self.loc)


def place_of(loc: tuple[str | int, ...]) -> str | None:
    """What the block of lockgate.yml at ``loc`` is, in a message: `source `warehouse``,
    `destination `customerio``, `webhooks`, `alerts[0]`; None for a top-level key (`state`)."""
    if len(loc) >= 2 and loc[0] in ("sources", "destinations"):
        return f"{str(loc[0])[:-1]} `{loc[1]}`"
    if len(loc) >= 2 and loc[0] == "alerts":
        return f"alerts[{loc[1]}]"
    if loc and loc[0] in ("webhooks", "run_log"):
        return f"`{loc[0]}`"
    return None


class Placed(StrictModel):
    """A block of lockgate.yml whose options may name environment variables: the loader gives
    it its :class:`Place`, so an error about one of them names the block, file and line."""

    _place: Place | None = PrivateAttr(default=None)

    def placed(self, place: Place) -> None:
        self._place = place


def check_secret(value: str | None, field: str, example: str = "CUSTOMERIO_API_KEY") -> str | None:
    """A secret field must be an ``${ENV_VAR}`` reference, never a literal."""
    if value is None or ENV_REF.match(value):
        return value
    raise ValueError(
        f"`{field}` must be an environment reference like `${{{example}}}`, "
        "not a literal secret; put the value in the environment"
    )


#: how environment variables are named by convention (POSIX's own variables, and what shells
#: and deployment tools export): upper-case letters, digits and `_`
CONVENTIONAL_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


@dataclass(frozen=True)
class Secret:
    """Marks a config field that holds a secret (`Annotated[str, Secret("CUSTOMERIO_API_KEY")]`):
    it accepts only an ``${ENV_VAR}`` reference (:func:`check_secret`, whose example names
    ``variable``), and a variable named in it is not printed unless named as variables are
    (:func:`name_hidden`). ``holds`` says whether a literal value holds a secret at all (a
    Postgres URL without a password may be written as it is); unset, every literal does.
    :data:`SECRET_KEYS` is read from these marks, and a test fails when a field whose name
    looks secret has none."""

    variable: str
    holds: Callable[[str], bool] | None = None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def check(value: str | None, info: core_schema.ValidationInfo) -> str | None:
            if value is not None and self.holds is not None and not self.holds(value):
                return value
            return check_secret(value, info.field_name or "value", self.variable)

        return core_schema.with_info_after_validator_function(check, handler(source))


def secret_fields(model: type[BaseModel]) -> dict[str, Secret]:
    """The fields of ``model`` and of every model inside it (a dict's values, a list's items,
    a union's members) marked :class:`Secret`, by key (the alias when the file uses one)."""
    found: dict[str, Secret] = {}
    seen: set[type[BaseModel]] = set()

    def leaves(annotation: Any) -> Iterable[Any]:
        args = typing.get_args(annotation)
        if not args:
            yield annotation
        for arg in args:
            yield from leaves(arg)

    def walk(tp: type[BaseModel]) -> None:
        if tp in seen:
            return
        seen.add(tp)
        for name, info in tp.model_fields.items():
            for mark in info.metadata:
                if isinstance(mark, Secret):
                    found[info.alias or name] = mark
            for leaf in leaves(info.annotation):
                if isinstance(leaf, type) and issubclass(leaf, BaseModel):
                    walk(leaf)

    walk(model)
    return found


def name_hidden(name: str, field: str) -> bool:
    """Whether the variable ``name`` that ``field`` (`destinations.customerio.api_key`,
    `alerts[0].url`, `password`) refers to must not be printed: the field holds a secret
    (:data:`SECRET_KEYS`) and the name is not written as variables are
    (:data:`CONVENTIONAL_ENV_NAME`). The secret wrapped in `${...}` (`api_key:
    ${sk_live_abc123}`) reads as a reference to a variable not set, whose "name" is the secret;
    one in upper case (`${CUSTOMERIO_API_KEY}`) is named."""
    key = field.rsplit(".", 1)[-1]
    return key in SECRET_KEYS and not CONVENTIONAL_ENV_NAME.match(name)


#: what is said of a variable whose name is not shown (:func:`name_hidden`)
HIDDEN_NAME = (
    "its name is not shown: in a secret's key and not in upper case, it may be the secret itself"
)

#: how to fix a secret written where its variable's name goes
HIDDEN_NAME_HINT = (
    "keep the secret in an environment variable named in upper case (`export MY_SECRET=...`) "
    "and write `${MY_SECRET}` in lockgate.yml; if what is written there is the secret itself, "
    "remove it from the file (and revoke it if the file was shared)"
)


def resolve_env(value: str | None, *, field: str, at: Placed | None = None) -> str | None:
    """The value of an ``${ENV_VAR}`` reference (or the literal value when not a reference).
    A variable not set is a ConfigError naming it (unless :func:`name_hidden`), and where it
    is named: the block ``at`` (the source, destination, ... ``field`` is an option of), its
    file and line. The value is never shown."""
    if value is None:
        return None
    match = ENV_REF.match(value)
    if not match:
        return value
    name = match.group(1)
    resolved = os.environ.get(name)
    if not resolved:
        raise unset_env(name, field, at, "is not set" if resolved is None else "is set but empty")
    return resolved


def unset_env(name: str, field: str, at: Placed | Place | None, state: str) -> ConfigError:
    """The error for the variable ``name`` that option ``field`` of block ``at`` names and
    that is not set (``state``: `is not set`, `is set but empty`): it names the block and the
    line of lockgate.yml (the block's own when the option is left to its default)."""
    place = at._place if isinstance(at, Placed) else at
    key = field.rsplit(".", 1)[-1]
    shown = key if place is not None else field
    prefix = f"{place.what}: " if place is not None and place.what else ""
    if name_hidden(name, field):
        error = ConfigError(
            f"{prefix}the environment variable named in `{shown}` {state} ({HIDDEN_NAME})",
            hint=HIDDEN_NAME_HINT,
        )
    else:
        error = ConfigError(
            f"{prefix}environment variable `{name}` (for `{shown}`) {state}",
            hint=f"export {name}=... before running, or change `{shown}`"
            + (f" of {place.what}" if place is not None and place.what else "")
            + " in lockgate.yml",
        )
    if place is not None:
        error.file, error.line = place.file, place.line_of(key)
    return error


#: an ``${ENV_VAR}`` reference inside a longer value (a path: `${DATA_DIR}/lockgate`)
ENV_IN_TEXT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_path_refs(value: str, field: str) -> str:
    """``value`` if each `$` in it starts an ``${ENV_VAR}`` reference; else a ValueError: a
    shell's `$HOME/x` is not expanded (only `${HOME}` is), and kept as written it made a
    folder named `$HOME` in the project."""
    rest = ENV_IN_TEXT.sub("", value)
    if "$" in rest:
        bare = re.search(r"\$(\w*)", rest)
        name = bare.group(1) if bare and bare.group(1) else "NAME"
        raise ValueError(
            f"`{field}` `{value}` has a `$` that is not an `${{VAR}}` reference: write "
            f"`${{{name}}}` for an environment variable"
        )
    return value


def expand_path(value: str, *, field: str, at: Placed | Place | None = None) -> str:
    """A path with its ``${ENV_VAR}`` references replaced by their values, then a leading `~`
    by the home folder (`~/lockgate`, `${STATE_VOLUME}/lockgate`). Raises ConfigError when a
    variable it names is not set or empty, naming the block ``at`` and its line when given
    (else without a location: the caller knows the line)."""
    for name in ENV_IN_TEXT.findall(value):
        if not os.environ.get(name):
            state = "is not set" if name not in os.environ else "is set but empty"
            raise unset_env(name, field, at, state)
    expanded = ENV_IN_TEXT.sub(lambda m: os.environ[m.group(1)], value)
    return os.path.expanduser(expanded)


def project_path(root: Path, value: str, *, field: str, at: Placed | Place | None = None) -> Path:
    """A path option of the project (`state:`, a DuckDB `path`, `webhooks.spool`, ...) as the
    folder or file it names: ``${ENV_VAR}`` references and a leading `~` expanded
    (:func:`expand_path`), then relative to the project folder ``root`` unless absolute."""
    return (root / expand_path(value, field=field, at=at)).resolve()


def looks_like_key(text: str) -> bool:
    """Whether the value of a key file's path option (`private_key_path`, `credentials_path`)
    is a key itself rather than a path: a PEM block, a JSON document, several lines, or a part
    longer than a file name can be (a base64 key on one line)."""
    return (
        "-----BEGIN" in text
        or text.lstrip().startswith("{")
        or "\n" in text
        or any(len(part) > 255 for part in re.split(r"[/\\]", text))
    )


#: how to give a key file instead of the key
KEY_FILE_HINT = (
    "write the key to a file kept out of the project's repository and give that file's path "
    "(or `${VAR}` naming a variable that holds the path); if the key was in a shared file or "
    "log, revoke it"
)


def check_key_file(value: str | None, field: str) -> str | None:
    """``value`` if it may be the path of a key file; else a ValueError that does not show it:
    a private key or a service-account JSON written where its file's path goes."""
    if value is None:
        return None
    if looks_like_key(value):
        raise PydanticCustomError(
            "key_not_path",
            f"`{field}` holds a key itself, not the path of the file holding it (not shown)",
            {"hint": KEY_FILE_HINT},
        )
    return check_path_refs(value, field)


def key_file(root: Path, value: str, *, field: str, who: str, at: Placed | None = None) -> Path:
    """The key file a `private_key_path` or `credentials_path` names (:func:`project_path`). A
    ConfigError, which never shows what the option's variables hold, when they hold the key
    itself (`${GOOGLE_CREDENTIALS}` set to the JSON); a SourceError when they name no file."""
    expanded = expand_path(value, field=field, at=at)
    if looks_like_key(expanded):
        raise ConfigError(
            f"{who}: `{field}` (`{value}`) holds a key itself, not the path of the file holding "
            "it (not shown)",
            hint=KEY_FILE_HINT,
        )
    path = (root / expanded).resolve()
    if not path.is_file():
        raise SourceError(
            f"{who}: cannot read key file `{value}`: `{path}` is not a file",
            hint=f"check `{field}` in lockgate.yml (relative to the project folder) and the "
            "variables it names",
        )
    return path


def check_url(value: str, where: str = "") -> str:
    """``value`` if it is an http(s) URL with a host; else a ValueError saying what one is
    (a URL without a scheme reached the HTTP client, which retried it as a network error)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"{where}`{value}` is not an http(s) URL; write e.g. `https://track.customer.io` or "
            "`http://127.0.0.1:8765`, or an env reference such as `${CUSTOMERIO_TRACK_URL}`"
        )
    return value


def url_host(url: str) -> str:
    """The host (and port) of ``url``, the one part of a secret URL that may be printed: a
    webhook or alert URL can carry a password (`https://user:password@host/...`) or a token (in
    its path or query), so neither its netloc nor the URL itself is ever shown."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address is written in brackets next to its port
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: the host alone
        port = None
    return f"{host}:{port}" if host and port else host


def parse_duration(value: str | int) -> int:
    """``72h`` / ``30m`` / ``90s`` / ``7d`` / a number of seconds → seconds."""
    if isinstance(value, int):
        return value
    match = DURATION.match(value.strip())
    if not match:
        raise ValueError(f"`{value}` is not a duration; use e.g. `72h`, `30m`, `90s` or `7d`")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


# --------------------------------------------------------------------------- sources


@functools.cache
def _time_zones() -> dict[str, str]:
    """The time zone names DuckDB knows (the IANA names, and a few aliases such as `UTC`),
    by their lower-case spelling: the zones a naive timestamp can be read in
    (:func:`lockgate.sync.mapping.coerce`), so a name is refused at load rather than when a
    run maps its first row."""
    import duckdb

    con = duckdb.connect()
    try:
        rows = con.execute("select name from pg_timezone_names()").fetchall()
    finally:
        con.close()
    return {str(name).lower(): str(name) for (name,) in rows}


def check_time_zone(value: str | None) -> str | None:
    """A `timezone:` option: an IANA time zone name (`America/New_York`), spelt as the zone
    database does (`america/new_york` is taken for it); anything else is refused, with the
    name meant when one is close."""
    if value is None:
        return None
    zones = _time_zones()
    found = zones.get(value.strip().lower())
    if found is not None:
        return found
    close = difflib.get_close_matches(value.strip().lower(), zones, n=1, cutoff=0.7)
    hint = (
        f"did you mean `{zones[close[0]]}`?"
        if close
        else "use an IANA name such as `America/New_York`, `Europe/Berlin` or `UTC` "
        "(an offset such as `+02:00` has no daylight saving time: use the place's zone)"
    )
    raise PydanticCustomError(
        "time_zone",
        f"`{value}` is not a time zone name (IANA, e.g. `America/New_York`)",
        {"hint": hint},
    )


#: the `timezone:` option of a source or a sync, checked as the file is loaded
TimeZone = Annotated[str | None, AfterValidator(check_time_zone)]


class DuckDBSourceConfig(Placed):
    """The embedded default warehouse: a DuckDB file (or `:memory:`)."""

    type: Literal["duckdb"] = "duckdb"
    """Picks this implementation."""
    path: str = "warehouse.duckdb"
    """Path of the DuckDB database file (or `:memory:`), relative to the project folder unless
    absolute. `${ENV_VAR}` references and a leading `~` are expanded, as in `state:`."""
    read_only: bool = True
    """Open the file read-only to read models (a model is never written). Lockgate's own
    tables (the identity graph's, `run_log:`, webhooks) are written on a connection of their
    own, whatever this says."""
    memory_limit: str = "64MB"
    """DuckDB buffer pool for reading models. Streaming a table needs little; raise it (e.g.
    `1GB`) for models whose SQL joins or aggregates large tables. The state engine has its own.
    Read-only files with the same limit share one pool in a process (docs/sources.md)."""
    timezone: TimeZone = None
    """The IANA time zone (`America/New_York`) whose local times this source's timestamps
    without a time zone hold (DuckDB `TIMESTAMP`, Postgres `timestamp`, Snowflake
    `TIMESTAMP_NTZ`, BigQuery `DATETIME`), for every sync reading it; a sync's own `timezone`
    overrides it. Unset: they are read as UTC (docs/sync.md, "Time zones")."""

    @field_validator("memory_limit")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        if not re.fullmatch(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", value.strip(), re.I):
            raise ValueError(f"`{value}` is not a memory size; write it like `64MB` or `1GB`")
        return value.strip()

    @field_validator("path")
    @classmethod
    def _path_refs(cls, value: str) -> str:
        return check_path_refs(value, "path")


def _has_password(url: str) -> bool:
    """Whether a Postgres URL holds a password: in its userinfo, in a `?password=` parameter or
    a `password=` keyword."""
    userinfo = url.split("@", 1)[0].split("//")[-1] if "@" in url else ""
    return ":" in userinfo or bool(re.search(r"(^|[\s?&])password\s*=", url, re.I))


class PostgresSourceConfig(Placed):
    """A Postgres server; also the path for Amazon Redshift (it speaks the Postgres protocol)."""

    type: Literal["postgres"] = "postgres"
    """Picks this implementation."""
    url: Annotated[str, Secret("WAREHOUSE_URL", holds=_has_password)]
    """Connection URL, e.g. `${WAREHOUSE_URL}`; may hold a password, so use an env reference."""
    redshift: bool = False
    """Set for Amazon Redshift: avoids server-side features Redshift lacks (see docs/sources.md)."""
    timezone: TimeZone = None
    """The IANA time zone (`America/New_York`) whose local times this source's timestamps
    without a time zone hold (DuckDB `TIMESTAMP`, Postgres `timestamp`, Snowflake
    `TIMESTAMP_NTZ`, BigQuery `DATETIME`), for every sync reading it; a sync's own `timezone`
    overrides it. Unset: they are read as UTC (docs/sync.md, "Time zones")."""


class SnowflakeSourceConfig(Placed):
    """Snowflake through the official connector."""

    type: Literal["snowflake"] = "snowflake"
    """Picks this implementation."""
    account: str
    """Account identifier, e.g. `${SNOWFLAKE_ACCOUNT}`."""
    user: str
    """User name."""
    password: Annotated[str | None, Secret("SNOWFLAKE_PASSWORD")] = None
    """Password as `${SNOWFLAKE_PASSWORD}` (secret). Give one of `password`, `private_key` or
    `private_key_path`."""
    private_key: Annotated[str | None, Secret("SNOWFLAKE_PRIVATE_KEY")] = None
    """The private key itself for key-pair authentication, as `${SNOWFLAKE_PRIVATE_KEY}`
    (secret): the PEM text (its line breaks may be written `\\n`) or base64 DER on one line,
    as CI systems hold keys. Instead of `password` or `private_key_path`."""
    private_key_path: str | None = None
    """Path to a PEM private key for key-pair authentication, instead of a password; relative
    to the project folder unless absolute. `${ENV_VAR}` references and a leading `~` are
    expanded, as in `state:`. The key itself, written here or in the variable, is refused
    (without being shown): give its file's path, or the key as `private_key`."""
    private_key_passphrase: Annotated[str | None, Secret("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE")] = None
    """Passphrase of an encrypted key (`private_key` or `private_key_path`), as
    `${SNOWFLAKE_PRIVATE_KEY_PASSPHRASE}` (secret)."""
    authenticator: Literal["oauth"] | None = None
    """`oauth` to log in with an OAuth access token (`token`) instead of a password or key;
    unset: `password`, or key-pair authentication with `private_key` or `private_key_path`."""
    token: Annotated[str | None, Secret("SNOWFLAKE_TOKEN")] = None
    """The OAuth access token for `authenticator: oauth`, as `${SNOWFLAKE_TOKEN}` (secret).
    Read when Lockgate connects, so whatever runs Lockgate keeps the variable fresh."""
    warehouse: str | None = None
    """Virtual warehouse to run queries on."""
    database: str | None = None
    """Default database."""
    schema_: str | None = Field(default=None, alias="schema")
    """Default schema."""
    role: str | None = None
    """Role to assume."""
    timezone: TimeZone = None
    """The IANA time zone (`America/New_York`) whose local times this source's timestamps
    without a time zone hold (DuckDB `TIMESTAMP`, Postgres `timestamp`, Snowflake
    `TIMESTAMP_NTZ`, BigQuery `DATETIME`), for every sync reading it; a sync's own `timezone`
    overrides it. Unset: they are read as UTC (docs/sync.md, "Time zones")."""

    @field_validator("private_key_path")
    @classmethod
    def _key_path(cls, value: str | None) -> str | None:
        return check_key_file(value, "private_key_path")

    @model_validator(mode="after")
    def _one_login(self) -> SnowflakeSourceConfig:
        """One way to log in: two were ambiguous (the connector silently preferred the key)."""
        given = [
            key
            for key in ("password", "private_key", "private_key_path")
            if getattr(self, key) is not None
        ]
        if self.authenticator == "oauth":
            if given:
                raise _error_at(
                    (given[0],),
                    f"`authenticator: oauth` logs in with `token`, not `{given[0]}`: remove "
                    f"`{given[0]}`, or `authenticator` to log in with it",
                )
            if self.token is None:
                raise _error_at(
                    ("authenticator",),
                    "`authenticator: oauth` needs `token: ${SNOWFLAKE_TOKEN}`, the OAuth access "
                    "token",
                )
        elif self.token is not None:
            raise _error_at(
                ("token",),
                "`token` is an OAuth access token: set `authenticator: oauth` to log in with "
                "it, or remove it",
            )
        if len(given) > 1:
            raise _error_at(
                (given[1],),
                f"both `{given[0]}` and `{given[1]}` are set; a Snowflake source logs in with "
                "one of `password`, `private_key` or `private_key_path`: remove the others",
            )
        if self.private_key_passphrase is not None and given in ([], ["password"]):
            raise _error_at(
                ("private_key_passphrase",),
                "`private_key_passphrase` decrypts a key, but neither `private_key` nor "
                "`private_key_path` is set",
            )
        return self


class BigQuerySourceConfig(Placed):
    """Google BigQuery through the official client."""

    type: Literal["bigquery"] = "bigquery"
    """Picks this implementation."""
    project: str
    """Google Cloud project that runs the queries, or an `${ENV_VAR}` reference."""
    dataset: str | None = None
    """Default dataset for unqualified table names, or an `${ENV_VAR}` reference."""
    location: str | None = None
    """Processing location, e.g. `EU`, or an `${ENV_VAR}` reference. Webhook loads without it
    load where the webhook dataset is (docs/webhooks.md)."""
    credentials_path: str | None = None
    """Service-account JSON file, relative to the project folder unless absolute (`${ENV_VAR}`
    references and a leading `~` are expanded, as in `state:`); default: Application Default
    Credentials. The JSON itself, written here or in the variable, is refused (without being
    shown): give its file's path."""
    timezone: TimeZone = None
    """The IANA time zone (`America/New_York`) whose local times this source's timestamps
    without a time zone hold (DuckDB `TIMESTAMP`, Postgres `timestamp`, Snowflake
    `TIMESTAMP_NTZ`, BigQuery `DATETIME`), for every sync reading it; a sync's own `timezone`
    overrides it. Unset: they are read as UTC (docs/sync.md, "Time zones")."""

    @field_validator("credentials_path")
    @classmethod
    def _key_path(cls, value: str | None) -> str | None:
        return check_key_file(value, "credentials_path")


SourceConfig = Annotated[
    DuckDBSourceConfig | PostgresSourceConfig | SnowflakeSourceConfig | BigQuerySourceConfig,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- destinations


class CustomerIODestinationConfig(Placed):
    """Customer.io: Track API v2 batches for writes, the App API for read-back."""

    type: Literal["customerio"] = "customerio"
    """Picks this implementation."""
    site_id: str = "${CUSTOMERIO_SITE_ID}"
    """Track API site id, as an env reference."""
    api_key: Annotated[str, Secret("CUSTOMERIO_API_KEY")] = "${CUSTOMERIO_API_KEY}"
    """Track API key, as an env reference (secret)."""
    app_api_key: Annotated[str | None, Secret("CUSTOMERIO_APP_API_KEY")] = (
        "${CUSTOMERIO_APP_API_KEY}"
    )
    """App API key for read-back and reconcile, as an env reference (secret)."""
    region: Literal["us", "eu"] | None = None
    """Workspace region: `us` or `eu`. Unset, the `CUSTOMERIO_REGION` variable, else `us`."""

    def region_to_use(self) -> Literal["us", "eu"]:
        """`region`, else the `CUSTOMERIO_REGION` variable (any case; empty is unset), else
        `us`: as `track_url` and `CUSTOMERIO_TRACK_URL`, what lockgate.yml says wins."""
        if self.region is not None:
            return self.region
        raw = os.environ.get("CUSTOMERIO_REGION") or ""
        value = raw.strip().lower() or "us"
        if value not in ("us", "eu"):
            raise ConfigError(
                f"`CUSTOMERIO_REGION` is `{raw}`, which is not a Customer.io region",
                hint="set it to `us` or `eu` (or `region:` in lockgate.yml's destination)",
            )
        return "eu" if value == "eu" else "us"

    track_url: str | None = None
    """Override the Track API base URL, e.g. `http://127.0.0.1:8765` for the local emulator,
    or an env reference (`${CUSTOMERIO_TRACK_URL}`). Unset, the `CUSTOMERIO_TRACK_URL`
    variable, else the region's Customer.io host."""
    app_url: str | None = None
    """Override the App API base URL; a URL or an env reference. Unset, the `CUSTOMERIO_APP_URL`
    variable, else `track_url` (or `CUSTOMERIO_TRACK_URL`) when set, else the region's App API
    host."""
    rate_limit: str = "100/s"
    """Requests per second to stay under, e.g. `100/s`."""
    concurrency: int = Field(default=8, ge=1, le=64)
    """Batches in flight at once."""
    max_retries: int = Field(default=8, ge=0, le=50)
    """Retries for 429, 5xx, timeouts and dropped connections before a record is dead-lettered."""
    stop_after_failed_batches: int = Field(default=3, ge=0)
    """Stop the run when this many batches in a row fail every retry (Customer.io down or
    unreachable): what was delivered is committed, the rest waits for the next run instead of
    being dead-lettered one batch at a time. 0 never stops."""
    batch_size: int | None = Field(default=None, ge=1)
    """Most operations per request; default: as many as fit in Customer.io's 500 KB limit."""
    read_back_emails: int = Field(default=100, ge=0)
    """With `app_api_key` set: after delivery, a people sync run identified by `id` and `email`
    reads back through the App API the people it gave a new email, the first this many (by
    key): Customer.io drops an update whose email another person holds, so such a row is
    rejected and sent again by the next run (docs/sync.md). 0 turns the read-back off."""
    check_new_emails: int = Field(default=1000, ge=0)
    """With `app_api_key` set: before delivery, a people sync run identified by `id` and `email`
    looks up through the App API who holds the emails of its new rows (not delivered before)
    and of its rows sent with another `id` than last delivered, the first this many (by
    key): Customer.io gives a new `id` sent with an email another person holds to that
    person, so a row whose email a person with another `id` holds is rejected instead, and
    checked again by the next run (docs/sync.md); so is a row whose email a person without an
    `id` holds when Customer.io has a person with the row's `id` already (it would drop the
    update whole). Rows past it are sent unchecked. 0 turns the check off."""

    @field_validator("track_url", "app_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not ENV_REF.match(value):
            check_url(value)
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        if not re.match(r"^\d+(\.\d+)?\s*/\s*s$", value):
            raise ValueError(f"`{value}` is not a rate; write requests per second, e.g. `100/s`")
        if float(value.split("/")[0]) <= 0:
            # refused by the first run that sent, naming neither the file nor the line
            raise ValueError(f"`{value}` sends nothing; write a rate above 0, e.g. `100/s`")
        return value

    @property
    def requests_per_second(self) -> float:
        return float(self.rate_limit.split("/")[0])


DestinationConfig = Annotated[CustomerIODestinationConfig, Field(discriminator="type")]


# --------------------------------------------------------------------------- syncs

FieldType = Literal["auto", "string", "number", "integer", "boolean", "timestamp", "date", "json"]
NullPolicy = Literal["skip", "clear", "default"]


class FieldConfig(StrictModel):
    """How one column becomes one attribute or event property."""

    column: str | None = None
    """Source column; defaults to the attribute's own name."""
    value: Any = None
    """A constant instead of a column; with a `type`, sent as a column's value of that type
    (`"2030-01-01T00:00:00Z"` as unix seconds under `timestamp`; a time without an offset is a
    local time in the sync's `timezone`, UTC when unset)."""
    type: FieldType = "auto"
    """Coercion: `timestamp`/`date` become unix seconds, `boolean`, `number`, `integer`, `string`,
    `json` (parse a JSON string), or `auto` (native types; timestamps still become unix seconds)."""
    on_null: NullPolicy | None = None
    """What a null does: `skip` (never overwrite; the default), `clear` (remove the attribute;
    not for an event property, which has no earlier value) or `default` (send `default`)."""
    default: Any = None
    """The value sent for a null when `on_null: default`, converted to the field's `type` as
    the column's values are."""

    #: a `timestamp` or `date` constant as written (`value`, `default`), before it was made
    #: unix seconds as UTC: read again in the sync's `timezone` (:func:`in_time_zone`)
    _written: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _spec(cls, value: Any) -> Any:
        """A column name is made a mapping before this (`_expand_fields`); anything else but a
        mapping (an empty value, a number) is refused saying what one is, not as pydantic's
        "a valid dictionary or instance of FieldConfig"."""
        if isinstance(value, dict | FieldConfig):
            return value
        if value is None:
            given = "not empty"
        else:
            shown = json.dumps(value, default=str)
            given = f"not `{shown}` (a constant is `{{value: {shown}}}`)"
        raise ValueError(
            "an attribute or property is a column name (`plan: plan_column`) or a mapping such "
            f"as `{{column: plan_column, type: string}}`, {given}"
        )

    @model_validator(mode="after")
    def _check(self) -> FieldConfig:
        # `{column: ""}` (or `plan: ""`) was read as no column: the field read the column of
        # its own name, and a run sent that column's values without a word
        _not_blank(
            self.column,
            "the field",
            "or leave `column` out to read the column named as the field",
        )
        if self.on_null == "default" and self.default is None:
            raise ValueError("`on_null: default` needs a `default` value")
        if self.column is not None and self.value is not None:
            raise ValueError("give either `column` or `value`, not both")
        return self

    @model_validator(mode="after")
    def _typed_constants(self) -> FieldConfig:
        """A `value` or `default` is sent as the field's `type` makes a column's value: a
        `type: timestamp` default of `"2030-01-01T00:00:00Z"` was sent as that text next to
        the unix seconds of every other row (two types in one Customer.io attribute). One the
        type cannot take is refused here, naming the field, rather than sent as something
        else."""
        from lockgate.sync.mapping import coerce_constant

        for what in ("value", "default"):
            constant = getattr(self, what)
            try:
                converted = coerce_constant(constant, self.type)
            except ValueError as exc:
                raise ValueError(f"`{what}`: {exc}") from None
            if self.type in ("timestamp", "date") and not isinstance(constant, int | float | None):
                # text (or a YAML date and time) without an offset is a local time in the
                # sync's `timezone`, which is known only once the sync (and its source) is
                self._written[what] = constant
            if converted != constant or type(converted) is not type(constant):
                object.__setattr__(self, what, converted)  # frozen once validated
        return self

    def in_time_zone(self, zone: str | None) -> FieldConfig:
        """This field with its `timestamp` or `date` constants read as a column's text is
        in the sync's `timezone` ``zone`` (one without an offset is a local time there); the
        field itself when that changes nothing."""
        from lockgate.sync.mapping import coerce_constant

        update = {
            what: converted
            for what, written in self._written.items()
            if (converted := coerce_constant(written, self.type, zone=zone)) != getattr(self, what)
        }
        return self.model_copy(update=update) if update else self


#: what `attributes:` / `properties:` may be written as (for the JSON Schema; `_expand_fields`
#: makes it the mapping of FieldConfig): names → column or spec, or a list of column names
FieldsInput = dict[str, str | FieldConfig] | list[str] | None


def _expand_fields(value: Any) -> Any:
    """Accept a list of column names, or a mapping name → column | field spec."""
    if value is None:
        return {}
    if isinstance(value, list):
        for position, name in enumerate(value, start=1):
            if not isinstance(name, str | int) or isinstance(name, bool):
                # `str()` made `- {column: plan}` the column `{'column': 'plan'}` and `- ` the
                # column `None`, which no model has: a failed run rather than this line
                raise ValueError(
                    f"item {position} of the list is "
                    + ("empty" if name is None else f"`{json.dumps(name, default=str)}`")
                    + ", not a column name: a list holds column names only; to give a field "
                    "a spec, write a mapping (`plan: {column: plan, type: string}`)"
                )
            if not str(name).strip():
                raise ValueError(
                    f"item {position} of the list is an empty column name; name one of the "
                    "model's columns, or take the item out"
                )
        return {str(name): {"column": str(name)} for name in value}
    if isinstance(value, dict):
        return {
            str(name): ({"column": spec} if isinstance(spec, str) else spec)
            for name, spec in value.items()
        }
    return value


# Customer.io's limits on the names and the number of attributes in one call (reference §9)
MAX_NAME_BYTES = 150
#: Customer.io's limit on an event's name, in bytes of UTF-8
MAX_EVENT_NAME_BYTES = 100
MAX_ATTRIBUTES = 300

# people `attributes:` keys that change who the person is or how Customer.io treats the
# request instead of setting an attribute (reference §1.2; `_relationship` from the objects
# docs). `email`, `created_at`, `unsubscribed` and `cio_subscription_preferences(.…)` are
# documented attribute uses and stay allowed.
_PEOPLE_RESERVED = {
    "id": "sent as an attribute it sets or changes the person's id in Customer.io; identify "
    "people with `identify_by: {id: COLUMN}`, or rename the attribute (e.g. `external_id`)",
    "cio_id": "it is Customer.io's own immutable id for the person; address people by it with "
    "`identify_by: {cio_id: COLUMN}`, or rename the attribute",
    "anonymous_id": "it links that anonymous visitor's earlier events to the person instead of "
    "storing a value; link visitors through `identity:` (docs/identity.md), or rename the "
    "attribute",
    "_update": "it makes the identify update-only (never create) instead of storing a value; "
    "use `mode: update` for that, or rename the attribute",
    "_timestamp": "it tells Customer.io when the update happened (to order updates) instead "
    "of storing a value; rename the attribute",
    "cio_relationships": "it adds or removes relationships to objects instead of storing a "
    "value; use a `relationships` sync (docs/sync.md)",
    "_relationship": "Customer.io reserves it for relationship-triggered campaigns; rename the "
    "attribute",
}
# object and relationship attributes Customer.io reserves (its objects docs, reference §3)
_OBJECT_RESERVED = {
    "object_id": "it is the object's identifier; rename the attribute",
    "objectId": "Customer.io reads it as the object's identifier; rename the attribute",
    "cio_object_id": "it is Customer.io's own immutable id for the object; rename the attribute",
    "relationship": "Customer.io reserves it for reaching relationships in liquid; rename the "
    "attribute",
    "_relationship": "Customer.io reserves it for relationship-triggered campaigns; rename the "
    "attribute",
}
# event data keys Customer.io reads as message settings (reference §1.4)
MESSAGE_OVERRIDES = {
    "recipient": "the recipient",
    "from_address": "the sender",
    "reply_to": "the reply-to address",
}


def reads_identify_email(spec: FieldConfig, column: str) -> bool:
    """True when an `email` attribute ``spec`` is the `identify_by` email read from ``column``
    again (as text): the sync sends it once, cleaned as an identifier."""
    return (
        spec.value is None
        and (spec.column or "email") == column
        and spec.type in ("auto", "string")
    )


def _error_at(loc: tuple[str | int, ...], message: str) -> ValidationError:
    """A validation error at ``loc``, so that the loader names that key's own line."""
    error = PydanticCustomError("value_error", message)
    return ValidationError.from_exception_data(
        "SyncConfig", [InitErrorDetails(type=error, loc=loc, input=None)]
    )


def _check_name(loc: tuple[str | int, ...], what: str, name: str) -> None:
    """A name Customer.io takes: not blank, at most 150 bytes of UTF-8."""
    if not name.strip():
        raise _error_at(loc, f"{what} name is empty; give it a name (`name: column`)")
    size = len(name.encode())
    if size > MAX_NAME_BYTES:
        shown = name if len(name) <= 40 else name[:40] + "…"
        raise _error_at(
            loc,
            f"{what} name `{shown}` is {size} bytes; Customer.io refuses names over "
            f"{MAX_NAME_BYTES} bytes (UTF-8). Give it a shorter name and keep the column with "
            "`short_name: {column: ...}`",
        )


class ModelRef(StrictModel):
    """Where a sync's rows come from: a table, inline SQL, or a `.sql` file."""

    table: str | None = None
    """A table or view name, optionally schema-qualified."""
    sql: str | None = None
    """An inline SQL query."""
    file: str | None = None
    """A `.sql` file, relative to the project folder."""

    @model_validator(mode="after")
    def _one(self) -> ModelRef:
        if sum(x is not None for x in (self.table, self.sql, self.file)) != 1:
            raise ValueError("a model needs exactly one of `table`, `sql` or `file`")
        for key in ("table", "sql", "file"):
            given = getattr(self, key)
            if given is not None and not given.strip():
                # read as `select * from` or as no query at all, each run's error
                raise ValueError(f"`{key}` is empty; a model needs a table, SQL or a file")
        return self


def _not_blank(column: str | None, what: str, otherwise: str = "") -> None:
    """Refuse a column name that is empty or only white space: no model has such a column,
    and the run that found out failed naming neither file nor line."""
    if column is not None and not column.strip():
        raise ValueError(
            f"{what} names an empty column; name one of the model's columns"
            + (f", {otherwise}" if otherwise else "")
        )


def _check_event_name(value: str) -> str:
    """A constant event name Customer.io takes (trimmed, as it is sent): not blank, at most
    100 bytes of UTF-8. One it refuses would reject every event of every run."""
    name = value.strip()
    if not name:
        raise ValueError("event name is blank; Customer.io refuses an event without one")
    size = len(name.encode())
    if size > MAX_EVENT_NAME_BYTES:
        raise ValueError(
            f"event name `{name[:40]}…` is {size} bytes; Customer.io refuses event names over "
            f"{MAX_EVENT_NAME_BYTES} bytes (UTF-8)"
        )
    return value


class EventNameConfig(StrictModel):
    """The event name: a column or a constant."""

    column: str | None = None
    """Column holding the event name."""
    value: str | None = None
    """A constant event name."""

    @model_validator(mode="after")
    def _one(self) -> EventNameConfig:
        _not_blank(self.column, "`event.name`")
        if (self.column is None) == (self.value is None):
            raise ValueError(
                "`event.name` needs exactly one of `column` and `value`: `name: event_name` "
                "or `name: {value: Order Placed}`"
            )
        if self.value is not None:
            _check_event_name(self.value)
        return self


class EventIdConfig(StrictModel):
    """The stable event id: a column, or a hash of key columns."""

    column: str | None = None
    """Column holding a unique id per occurrence."""
    hash: list[str] | None = None
    """Columns whose values together identify one occurrence; their hash is the id."""

    @model_validator(mode="after")
    def _one(self) -> EventIdConfig:
        _not_blank(self.column, "`event.id`")
        for column in self.hash or []:
            _not_blank(column, "`event.id.hash`")
        if self.hash and len({c.lower() for c in self.hash}) < len(self.hash):
            raise ValueError(
                f"`event.id.hash` names a column twice ({', '.join(f'`{c}`' for c in self.hash)})"
                "; list each column once"
            )
        if (self.column is None) == (not self.hash):
            raise ValueError(
                "`event.id` needs exactly one of `column` and `hash` (a list of columns): "
                "`id: order_id` or `id: {hash: [order_id, line]}`"
            )
        return self


class BackfillConfig(StrictModel):
    """What happens to events older than `max_age` (Customer.io only triggers on recent events)."""

    max_age: str = "72h"
    """Events older than this are backfill."""
    older: Literal["skip", "send"] | dict[str, str] = "skip"
    """`skip` (counted, not sent; not recorded either, so a later `send` sends them), `send`
    (send as is), or `{rename: "{name}_backfill"}`."""
    first_run: Literal["skip", "send"] | None = None
    """Without `event.timestamp` (every event is sent as happening now, so its age cannot be
    told): what the first run (and the first after `--new-workspace`) does with the events
    already in the model. Unset, the first run stops before sending anything (unless `older`
    is `send`, which sends them all now, or a `rename`, which sends them all under the
    backfill name); `skip` records them as history, never sent (only events that appear later
    are sent); `send` sends them all now."""

    @field_validator("max_age", mode="before")
    @classmethod
    def _age_has_a_unit(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(
                f"`max_age: {value}` has no unit; write a duration such as `{value}h`, `30m`, "
                "`90s` or `7d`"
            )
        return value

    @field_validator("max_age")
    @classmethod
    def _age(cls, value: str) -> str:
        if parse_duration(value) == 0:
            # every event is older than that: each run held back (or renamed) them all
            raise ValueError(
                f"`max_age: {value}` makes every event older than the limit, so none would be "
                "sent as it is; write how old an event may be and still trigger campaigns, "
                "e.g. `72h`"
            )
        return value

    @field_validator("older")
    @classmethod
    def _older(cls, value: Any) -> Any:
        if isinstance(value, dict) and (
            set(value) != {"rename"} or "{name}" not in value["rename"]
        ):
            raise ValueError('`older` must be `skip`, `send` or `{rename: "{name}_backfill"}`')
        return value

    @property
    def max_age_seconds(self) -> int:
        return parse_duration(self.max_age)

    @property
    def untimed_first_run(self) -> Literal["skip", "send", "rename"] | None:
        """`first_run`, else what `older` says of old events: `send` (as they are) or
        `rename` (under the backfill name). None: not chosen, the first run of a sync without
        timestamps stops."""
        if self.first_run is not None:
            return self.first_run
        if isinstance(self.older, dict):
            return "rename"
        return "send" if self.older == "send" else None


class EventConfig(StrictModel):
    """How each row becomes one Customer.io event."""

    name: EventNameConfig
    """A column name, or `{value: constant_name}`."""
    timestamp: str | None = None
    """Column with when it happened; sent as unix seconds. Default: the time of sending."""
    id: EventIdConfig
    """A column, or `{hash: [col, ...]}`: sent as the event's dedupe `id`."""

    @field_validator("timestamp")
    @classmethod
    def _timestamp(cls, value: str | None) -> str | None:
        # a blank one was taken for none: every event sent as happening at the time of sending
        _not_blank(value, "`event.timestamp`", "or leave the key out to send each event as of now")
        return value

    @field_validator("name", mode="before", json_schema_input_type=str | EventNameConfig)
    @classmethod
    def _name_shorthand(cls, value: Any) -> Any:
        return {"column": value} if isinstance(value, str) else value

    @field_validator("id", mode="before", json_schema_input_type=str | EventIdConfig)
    @classmethod
    def _column_shorthand(cls, value: Any) -> Any:
        return {"column": value} if isinstance(value, str) else value


class OnChangeConfig(StrictModel):
    """An event fired when a mapped attribute changes, e.g. cart `open` → `inactive`."""

    attribute: str
    """The mapped attribute (a key of `attributes`) to watch."""
    from_: Any = Field(default=None, alias="from")
    """Fire only when the previous value was this (default: any value)."""
    to: Any = None
    """Fire only when the new value is this (default: any value)."""
    event: str
    """Name of the event sent to the person (from an objects sync, to each person related to
    the object: docs/sync.md)."""
    properties: dict[str, FieldConfig] = Field(default_factory=dict)
    """Event properties: name → column or field spec (also accepts a list of column names)."""
    unless: str | None = None
    """A SQL condition over the model's columns; when true the event is not fired (put
    warehouse lookups, such as an order after the cart, in the model's SQL)."""

    @field_validator("properties", mode="before", json_schema_input_type=FieldsInput)
    @classmethod
    def _fields(cls, value: Any) -> Any:
        return _expand_fields(value)

    @field_validator("event")
    @classmethod
    def _event(cls, value: str) -> str:
        return _check_event_name(value)

    @field_validator("attribute")
    @classmethod
    def _attribute(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "`attribute` is empty; name the mapped attribute (a key of `attributes`) to watch"
            )
        return value

    @field_validator("unless")
    @classmethod
    def _unless(cls, value: str | None) -> str | None:
        # a blank condition was taken for none: the event fired on every change
        if value is not None and not value.strip():
            raise ValueError(
                "`unless` is empty; write a SQL condition over the model's columns, or leave "
                "the key out to fire on every change"
            )
        return value


LIMIT = re.compile(r"^\s*(\d+(\.\d+)?)\s*%\s*$")
#: what a breaker limit may be written as (for the JSON Schema): a count, a share, `off` (which
#: a YAML 1.1 reader reads as false) or nothing
LimitInput = Annotated[int, Field(ge=0)] | str | Literal[False] | None


def _check_limit(value: Any) -> Any:
    """A breaker limit: `off`, a share like `25%` (of the previous snapshot), or a count."""
    if value is False:  # YAML reads a bare `off` as false
        return "off"
    if value is None or value == "off" or (isinstance(value, int) and not isinstance(value, bool)):
        if isinstance(value, int) and value < 0:
            raise ValueError(f"`{value}` is negative; give a count >= 0 or a share like `25%`")
        return value
    if isinstance(value, str) and LIMIT.match(value) and float(value.strip().rstrip("%")) <= 100:
        return value.strip()
    raise ValueError(f"`{value}` is not a limit; write a share like `25%`, a count, or `off`")


#: the families type drift compares column types by (`guard.type_family`)
TYPE_FAMILIES = ("timestamp", "number", "string", "boolean", "json", "nested", "time", "interval")


class GuardrailsConfig(StrictModel):
    """The data contract of a sync: circuit breakers and acknowledged changes (docs/guardrails.md).

    A breaker limit is a share of the previous committed snapshot (`25%`), an absolute count
    (`500`) or `off`; unset fields inherit `defaults.guardrails`."""

    max_changed: int | str | None = None
    """People already in the snapshot whose payload changed, e.g. `25%` of the snapshot's
    people (or a count). Share-based limits are skipped on a first run."""
    max_cleared: int | str | None = None
    """Attribute values sent as cleared (`""`: `on_null: clear` and mirror removals), e.g.
    `2%` of the snapshot's people × the sync's mapped attributes (or a count)."""
    max_removed: int | str | None = None
    """People in the snapshot who left the model (in any mode), e.g. `5%` of the snapshot
    (or a count)."""
    max_events: int | str | None = None
    """Events sent in one run (a count, e.g. `100000`)."""
    max_rejected: int | str | None = None
    """Rows of the model the mapping rejects (null identifier, bad type, oversized value...),
    e.g. `1%` of this run's rows (or a count); applies on a first run too."""
    accept_type_changes: dict[str, str] = Field(default_factory=dict)
    """Acknowledged column type changes, column → new type as the warehouse reports it now
    (e.g. `{signed_up_at: VARCHAR}`); a type changed since the last committed run stops the
    sync until listed here."""
    shared_attributes: list[str] = Field(default_factory=list)
    """Attributes this sync knowingly writes along with another sync; an ownership conflict
    is an error unless every sync writing the attribute lists it."""
    distinct_event_names: list[str] = Field(default_factory=list)
    """Event names that are meant to differ from their look-alikes (e.g. `Checkout Abandoned`
    next to `Abandoned Checkout`); `lockgate validate` reports such a pair as a warning."""
    warn_at: str | None = None
    """Warn when a run reaches this share of a circuit breaker's limit without breaching it,
    e.g. `80%`: the run goes on, the guardrail shows `near limit`, and `alerts:` get a
    `warning` (off unless set)."""

    @field_validator("warn_at", mode="before")
    @classmethod
    def _share(cls, value: Any) -> Any:
        if value is None:
            return None
        text = str(value).strip()
        if not text.endswith("%") or not LIMIT.match(text) or not 0 < float(text[:-1]) <= 100:
            raise ValueError(
                f"`{value}` is not a share of a limit; write one like `80%` (above 0, up to 100%)"
            )
        return text

    @field_validator(
        "max_changed",
        "max_cleared",
        "max_removed",
        "max_rejected",
        mode="before",
        json_schema_input_type=LimitInput,
    )
    @classmethod
    def _limit(cls, value: Any) -> Any:
        return _check_limit(value)

    @field_validator("accept_type_changes")
    @classmethod
    def _types(cls, value: dict[str, str]) -> dict[str, str]:
        """Each acknowledged type is a type the warehouse can report (as DuckDB names it) or a
        family: a typo (`VARCHR`) would acknowledge nothing, and the sync stay refused."""
        import duckdb

        for column, name in value.items():
            if str(name).strip().lower() in TYPE_FAMILIES:
                continue
            if str(name).strip().strip('"').upper() == "NULL":
                raise ValueError(
                    f"`accept_type_changes.{column}`: NULL is no type to accept: it is what a "
                    f"bare `null as {column}` in the model gives, every value null (most often "
                    "a broken join or a placeholder). Fix the model: cast the column so it "
                    f"keeps its type (`cast(null as <its type>) as {column}`), or remove the "
                    "field from the sync file"
                )
            try:
                duckdb.sqltype(str(name))
            except duckdb.Error:
                raise ValueError(
                    f"`accept_type_changes.{column}`: `{name}` is not a type; write the new type "
                    "as the type drift error shows it (`VARCHAR`, `TIMESTAMP WITH TIME ZONE`, "
                    f"`DECIMAL(12,2)`) or its family: {', '.join(TYPE_FAMILIES)}"
                ) from None
        return value

    @field_validator("max_events", mode="before", json_schema_input_type=LimitInput)
    @classmethod
    def _events(cls, value: Any) -> Any:
        value = _check_limit(value)
        if isinstance(value, str) and value != "off":
            raise ValueError("`max_events` is a count of events per run, e.g. `100000`")
        return value


#: what a sync can be (`kind:`)
SYNC_KINDS = ("people", "events", "objects", "relationships")

#: the kinds of sync that use each key some kinds have no use for
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "identify_by": ("people", "events", "relationships"),
    "primary_key": ("people", "objects"),
    "mode": ("people", "objects", "relationships"),
    "attributes": ("people", "objects"),
    "event": ("events",),
    "properties": ("events",),
    "backfill": ("events",),
    "on_change": ("people", "objects"),
    "clear_removed_attributes": ("people", "objects"),
    "object_type_id": ("objects", "relationships"),
    "object_id": ("relationships",),
    "relationship_attributes": ("relationships",),
}


def unused_key(kind: str, key: str) -> str | None:
    """What to say of ``key`` in a sync of ``kind`` that has no use for it (None: it has)."""
    if key not in KIND_KEYS or kind in KIND_KEYS[key]:
        return None
    if kind == "relationships" and key in ("attributes", "event", "properties"):
        return "use `relationship_attributes` in a `relationships` sync"
    if key in ("event", "properties"):
        return "`event` and `properties` belong to `events` syncs"
    if key == "attributes":
        return "`attributes` belong to `people` syncs; use `properties`"
    if key == "identify_by":
        return "an `objects` sync has no `identify_by`; `primary_key` is the id"
    if key == "mode":
        return (
            "`mode` does not apply to an `events` sync: each row is one event, sent once "
            "whatever the mode; remove it"
        )
    if key == "primary_key":
        keyed = "`event.id`" if kind == "events" else "its person and `object_id`"
        return f"an `{kind}` sync is keyed by {keyed}, not `primary_key`; remove it"
    if key in ("on_change", "clear_removed_attributes"):
        return f"`{key}` belongs to `people` and `objects` syncs"
    users = " and ".join(f"`{k}`" for k in KIND_KEYS[key])
    return f"`{key}` belongs to {users} syncs; remove it"


class SyncConfig(StrictModel):
    """One sync: a model, a kind, a mapping, a destination (`syncs/<name>.yml`). Files in
    folders under `syncs/` are read too (`syncs/marketing/leads.yml`). Only files ending in
    `.yml` or `.yaml` are read, and none whose name starts with `.` or that is in a folder
    whose name does (an editor's lock or swap file such as `.#leads.yml`, `.git`); commands
    name a sync by its `name`, which is unique in the project whatever folder its file is
    in."""

    _graph_identifiers: dict[str, str] | None = PrivateAttr(default=None)
    _graph_columns: frozenset[str] = PrivateAttr(default=frozenset())

    def keyed_through_graph(self, graph_columns: Iterable[str], **update: Any) -> SyncConfig:
        """This sync with its rows keyed by the identity graph (``update``: the graph's
        Customer.io identifier columns, the attributes it adds; ``graph_columns``: the columns
        the graph adds to each row). What the model itself identifies rows by, and which
        columns are its own, stay known, so messages name the user's columns."""
        keyed = self.model_copy(update=update)
        keyed._graph_identifiers = self.model_identifiers
        keyed._graph_columns = frozenset(graph_columns)
        return keyed

    @property
    def keyed_by_graph(self) -> bool:
        """Whether this sync's rows are keyed by the identity graph
        (:meth:`keyed_through_graph`)."""
        return self._graph_identifiers is not None

    @property
    def graph_columns(self) -> frozenset[str]:
        """The columns the identity graph adds to each row of this (keyed) sync's model: no
        sync file can name them, so a message listing the model's columns leaves them out."""
        return self._graph_columns

    @property
    def model_identifiers(self) -> dict[str, str]:
        """Identifier type → the model's column, as configured (before any keying through the
        identity graph)."""
        return self._graph_identifiers or self.identify_by

    name: str = Field(pattern=SYNC_NAME.pattern)
    """Lower-case name, unique in the project; also the state's key."""
    source: str
    """Name of a source in lockgate.yml."""
    model: ModelRef
    """`{table: ...}`, `{sql: ...}` or a path to a `.sql` file."""
    kind: Literal["people", "events", "objects", "relationships"]
    """`people` (one row per person → identify), `events` (one row per occurrence → track),
    `objects` (one row per object, e.g. a company) or `relationships` (one row per
    person-object pair)."""
    destination: str = "customerio"
    """Name of a destination in lockgate.yml."""
    primary_key: str | list[str] | None = None
    """Column(s) identifying a row; required for `people`; for `objects`, the object id."""
    identify_by: dict[str, str] = Field(default_factory=dict)
    """Identifier type → column, e.g. `{id: customer_id, email: email}`. Types: `id` (alias
    `user_id`), `email`, `cio_id`, or a type declared under `identity:`. Not for `objects`."""
    mode: Literal["upsert", "update", "mirror"] | None = None
    """`upsert` creates and updates; `update` never creates (people only: Customer.io has no
    update-only identify for objects); `mirror` also clears the mapped attributes of people (or
    objects) who leave the model, and removes relationships that leave it. Default: `mirror` for
    `relationships`, `upsert` otherwise."""
    delete_removed: bool = False
    """With `mirror`: delete (instead of clearing) people or objects who leave the model."""
    clear_removed_attributes: bool = False
    """`people` and `objects`: when an attribute is taken out of `attributes`, the next run
    clears it (sends `""`) on every record it sends. A mapping change sends each record again,
    so that is every record in the model; `max_cleared` counts the clears. Off (the default),
    Customer.io keeps the values sent before. Turn it on in the same change that removes the
    attribute: the run compares the mapping with the last committed run's."""
    object_type_id: str | None = None
    """`objects` and `relationships`: the Customer.io object type id, e.g. `"1"`."""
    object_id: str | None = None
    """`relationships`: the column holding the object id the person is related to."""
    relationship_attributes: dict[str, FieldConfig] = Field(default_factory=dict)
    """`relationships`: attribute name → column or field spec, stored on the relationship
    (at most 300, names up to 150 bytes)."""
    on_change: list[OnChangeConfig] = Field(default_factory=list)
    """`people` and `objects`: events fired when a mapped attribute changes value (an object's
    go to the people related to it)."""
    attributes: dict[str, FieldConfig] = Field(default_factory=dict)
    """`people` and `objects`: attribute name → column or field spec (also accepts a list of
    column names). At most 300, names up to 150 bytes; names Customer.io reads as something
    other than an attribute (`id`, `_update`, `object_id`...) are refused (docs/sync.md)."""
    event: EventConfig | None = None
    """`events`: name, timestamp and id."""
    properties: dict[str, FieldConfig] = Field(default_factory=dict)
    """`events`: property name → column or field spec (also accepts a list of column names);
    names up to 150 bytes."""
    allow_message_overrides: bool = False
    """`events` and `on_change`: allow event properties named `recipient`, `from_address` or
    `reply_to`. Customer.io reads them as the recipient, sender and reply-to of every message a
    campaign triggered by the event sends, so such a property is an error unless this is set."""
    backfill: BackfillConfig = Field(default_factory=BackfillConfig)
    """`events`: what to do with old events."""
    on_null: NullPolicy = "skip"
    """Default null policy for this sync's fields; unset, `defaults.on_null` of lockgate.yml
    (for an events sync, `skip`: a null property is left out; `clear` is refused there, an
    event having no earlier value to clear)."""
    timezone: TimeZone = None
    """The IANA time zone (`America/New_York`) whose local times the model's timestamps
    without a time zone hold: its attributes, properties and `event.timestamp` are read in it,
    daylight saving time included, as are text and constants read as a `timestamp` or `date`
    that carry no offset. Unset: the source's `timezone`, else UTC (docs/sync.md, "Time
    zones")."""
    schedule: str | None = None
    """When `lockgate schedule` runs this sync: a cron expression in UTC (`*/15 * * * *`; a
    sixth field is seconds). Or leave it out and run `lockgate sync NAME` from cron, Airflow
    or CI."""
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig)
    """Circuit breakers and acknowledged contract changes; unset limits inherit
    `defaults.guardrails` (docs/guardrails.md)."""

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        """Say what a name is, with one made of the name given, before pydantic's "should match
        pattern" does (the pattern stays on the field for the JSON Schema)."""
        if isinstance(value, str) and not SYNC_NAME.fullmatch(value):
            fixed = re.sub(r"[^a-z0-9_]+", "_", value.lower()).strip("_")
            fixed = fixed if re.match(r"[a-z]", fixed) else f"sync_{fixed}".rstrip("_")
            raise ValueError(
                f"sync name `{value}` may hold only lower-case letters, digits and `_`, starting "
                f"with a letter: e.g. `{fixed}`"
            )
        return value

    @field_validator("primary_key", mode="before")
    @classmethod
    def _key_names(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else value
        if value is not None and not (
            isinstance(names, list) and all(isinstance(v, str) for v in names)
        ):
            raise ValueError(
                f"`primary_key` is a column name or a list of them (e.g. `user_id`), not "
                f"`{value}` (quote a column whose name is a number)"
            )
        # none of these reach the model: `[]` was a bug report (SQL with an empty condition),
        # a blank name a column the model never has, a repeated one a key of `1|1`
        if names == []:
            raise ValueError("`primary_key` is an empty list; name the column(s), e.g. `user_id`")
        if names is not None and any(not name.strip() for name in names):
            raise ValueError("`primary_key` names an empty column; name the column, e.g. `user_id`")
        if names is not None and len({name.lower() for name in names}) < len(names):
            raise ValueError(
                f"`primary_key` names a column twice ({', '.join(f'`{n}`' for n in names)}); "
                "list each column once"
            )
        return value

    @field_validator(
        "attributes",
        "properties",
        "relationship_attributes",
        mode="before",
        json_schema_input_type=FieldsInput,
    )
    @classmethod
    def _fields(cls, value: Any) -> Any:
        return _expand_fields(value)

    @field_validator("model", mode="before", json_schema_input_type=str | ModelRef)
    @classmethod
    def _model(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError(
                    "`model` is empty; write a table (`analytics.users`), a `.sql` file or "
                    "`{sql: ...}`"
                )
            return {"file": value} if value.endswith(".sql") else {"table": value}
        return value

    @field_validator("object_type_id", mode="before", json_schema_input_type=int | str | None)
    @classmethod
    def _type_id(cls, value: Any) -> Any:
        if value is None:
            return value
        if not str(value).isdigit():
            raise ValueError(f'`object_type_id` is `{value}`; it is a number such as `"1"`')
        return str(value)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from croniter import CroniterBadDateError, croniter

            # croniter takes a seventh field (years), which ends a schedule: `lockgate
            # schedule` would stop on its last slot; five fields, or six with seconds last
            if not croniter.is_valid(value) or len(value.split()) > 6:
                raise ValueError(f"`{value}` is not a cron expression, e.g. `*/15 * * * *`")
            try:  # valid but never due (`0 0 30 2 *`): the scheduler stopped on it
                croniter(value, datetime.now(UTC)).get_next(datetime)
            except CroniterBadDateError:
                raise ValueError(
                    f"`{value}` is never due: no month has that day (e.g. February 30)"
                ) from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _kind_keys(cls, data: Any) -> Any:
        """A key the sync's kind has no use for (:data:`KIND_KEYS`) is an error at its own
        line, not silently dropped (`mode: update` on an events sync would still create
        people). Checked before the keys' values are: a people sync's `event:` block is named
        as the mistake it is, not for the `id` an events sync's block would need. An empty
        value (`event:`, `attributes: {}`) uses nothing."""
        if not isinstance(data, dict) or data.get("kind") not in SYNC_KINDS:
            return data  # a kind not known is pydantic's to name
        for key, value in data.items():
            if value is None or value == {} or value == [] or value is False:
                continue
            message = unused_key(data["kind"], key)
            if message is not None:
                raise _error_at((key,), message)
        return data

    @model_validator(mode="after")
    def _kind_fields(self) -> SyncConfig:
        """Keys the sync's kind needs (a key it has no use for: :meth:`_kind_keys`). Each
        error names the key's own line (or `kind:`'s, for a key missing)."""

        def error(key: str, message: str) -> ValidationError:
            return _error_at((key,) if key in self.model_fields_set else ("kind",), message)

        kind = self.kind
        if kind != "objects" and not self.identify_by:
            raise error(
                "identify_by", "`identify_by` needs at least one identifier, e.g. `{id: user_id}`"
            )
        if kind == "objects":
            if self.primary_key is None or self.object_type_id is None:
                raise error("kind", "an `objects` sync needs `object_type_id` and `primary_key`")
            if self.mode == "update":
                # `_update` is a person attribute: an object identify by type and id always
                # creates what it names, so `update` would create every object it sends
                raise error(
                    "mode",
                    "an `objects` sync is `upsert` or `mirror`: Customer.io has no update-only "
                    "identify for an object named by type and id (`_update: true` is for "
                    "people), so `update` would create every object it sends",
                )
        if kind == "relationships":
            if self.object_type_id is None or self.object_id is None:
                raise error("kind", "a `relationships` sync needs `object_type_id` and `object_id`")
            if self.mode == "update":
                raise error("mode", "a `relationships` sync is `upsert` or `mirror`")
        if kind == "people":
            if self.primary_key is None:
                raise error("kind", "a `people` sync needs `primary_key`")
        if kind == "events":
            if self.event is None:
                raise error("kind", "an `events` sync needs `event: {name, timestamp, id}`")
            if self.event.timestamp and self.backfill.first_run is not None:
                raise _error_at(
                    ("backfill", "first_run"),
                    "`backfill.first_run` is for events syncs without `event.timestamp`: with "
                    "one, `backfill.max_age` tells old events from new (take `first_run` out)",
                )
        if self.delete_removed and self.effective_mode != "mirror":
            raise error("delete_removed", "`delete_removed` only applies with `mode: mirror`")
        return self

    @model_validator(mode="after")
    def _no_clear_in_events(self) -> SyncConfig:
        """`on_null: clear` on an event property (of an events sync or an `on_change` rule) is
        refused at its line: an event has no earlier value to clear, and the `""` it sent
        for a null looked like a value the event carried."""
        hint = (
            "an event has no earlier value to clear: leave `on_null` out and a null property "
            "is left out of the event, or send an empty string for it with "
            "`{column: ..., on_null: default, default: ''}`"
        )
        if self.kind == "events" and "on_null" in self.model_fields_set and self.on_null == "clear":
            raise _error_at(("on_null",), f"`on_null: clear` is for attributes; {hint}")
        groups: list[tuple[tuple[str | int, ...], dict[str, FieldConfig]]] = [
            (("on_change", i, "properties"), rule.properties)
            for i, rule in enumerate(self.on_change)
        ]
        if self.kind == "events":
            groups.insert(0, (("properties",), self.properties))
        for loc, fields in groups:
            for name, spec in fields.items():
                if spec.on_null == "clear":
                    raise _error_at(
                        (*loc, name, "on_null"),
                        f"event property `{name}` has `on_null: clear`; {hint}",
                    )
        return self

    @model_validator(mode="after")
    def _columns_named(self) -> SyncConfig:
        """An identifier or object id read from an empty column name is refused at its line:
        `validate` passed it and every run failed at `plan`."""
        for kind, column in self.identify_by.items():
            example = "user_id" if kind in ("id", "user_id") else f"{kind}_column"
            if not column.strip():
                raise _error_at(
                    ("identify_by", kind),
                    f"`identify_by.{kind}` names an empty column; name the model's column that "
                    f"holds each row's `{kind}`, e.g. `{{{kind}: {example}}}`",
                )
        if self.object_id is not None and not self.object_id.strip():
            raise _error_at(
                ("object_id",),
                "`object_id` names an empty column; name the model's column that holds the id "
                "of the object each person is related to",
            )
        return self

    @model_validator(mode="after")
    def _watched_constants(self) -> SyncConfig:
        """An `on_change` rule's `from` or `to` that the watched attribute's `type` cannot
        take is refused at its line (:meth:`watched_constant`)."""
        for i, rule in enumerate(self.on_change):
            for what in ("from", "to"):
                try:
                    self.watched_constant(rule, what)
                except ValueError as exc:
                    spec = self.attributes[rule.attribute]
                    raise _error_at(
                        ("on_change", i, what),
                        f"`{what}`: {exc} (attribute `{rule.attribute}` is `type: {spec.type}`)",
                    ) from None
        return self

    def watched_constant(self, rule: OnChangeConfig, what: Literal["from", "to"]) -> Any:
        """A rule's `from` or `to` as the value it is compared with: the watched attribute's
        value as sent, so under the attribute's `type`, as a column's value of that type is
        (a `type: timestamp` attribute's `to: 2030-01-01` is its unix seconds, a `type:
        string` one's `to: 2` the text `2`; either never matched). Under `auto` or `json`, as
        written. Raises ValueError for one the type cannot take."""
        from lockgate.sync.mapping import coerce_constant

        value = rule.from_ if what == "from" else rule.to
        spec = self.attributes.get(rule.attribute)
        if value is None or spec is None or spec.type in ("auto", "json"):
            return value
        return coerce_constant(value, spec.type, zone=self.timezone)

    @model_validator(mode="after")
    def _customerio_names(self) -> SyncConfig:
        """Attribute and property names Customer.io refuses, or reads as something else."""
        maps: list[tuple[tuple[str | int, ...], str, dict[str, FieldConfig]]] = [
            (("attributes",), "attribute", self.attributes),
            (("relationship_attributes",), "relationship attribute", self.relationship_attributes),
            (("properties",), "event property", self.properties),
        ]
        maps += [
            (("on_change", i, "properties"), "event property", change.properties)
            for i, change in enumerate(self.on_change)
        ]
        for loc, what, fields in maps:
            for name in fields:
                _check_name((*loc, name), what, name)
                people = what == "attribute" and self.kind == "people"
                reserved = _PEOPLE_RESERVED if people else _OBJECT_RESERVED
                why = reserved.get(name) if what != "event property" else None
                if why is not None:
                    raise _error_at((*loc, name), f"{what} `{name}` is reserved: {why}")
                if what == "event property" and name in MESSAGE_OVERRIDES:
                    if not self.allow_message_overrides:
                        raise _error_at(
                            (*loc, name),
                            f"event property `{name}` overrides {MESSAGE_OVERRIDES[name]} of "
                            "every message a campaign triggered by this event sends; if that is "
                            "meant, set `allow_message_overrides: true` in this sync, otherwise "
                            "rename the property",
                        )
            count, implicit = len(fields), ""
            if what == "attribute" and self.kind == "people":
                count, added = self.identify_keys()
                implicit = f" (with {' and '.join(added)})" if added else ""
            if what != "event property" and count > MAX_ATTRIBUTES:
                most = MAX_ATTRIBUTES - (count - len(fields))
                raise _error_at(
                    loc,
                    f"{count} {what}s in one call{implicit}; Customer.io refuses more than "
                    f'{MAX_ATTRIBUTES} ("cannot identify more than 300 attributes in one '
                    f'request"), so every such call would fail. Map at most {most}: drop some, '
                    "or gather related ones into one `type: json` attribute",
                )
        return self

    def identify_keys(self, cleared: int = 0) -> tuple[int, list[str]]:
        """The most keys a people sync's calls put in one `attributes` object, and what besides
        its mapped attributes is among them (in words): the `email` it adds from
        `identify_by`, the `_update: true` of `mode: update` and of each `mirror` removal, and
        ``cleared`` removed attributes it clears (`clear_removed_attributes`). Customer.io
        counts them all against its 300 (the emulator, per its reference, does too)."""
        count, added = len(self.identify_attributes), []
        if count > len(self.attributes):
            added.append("the `email` that `identify_by` adds")
        if cleared:
            count += cleared
            added.append(f"the {cleared} removed attribute{'s' if cleared > 1 else ''} cleared")
        if self.effective_mode == "update":
            count += 1
            added.append("the `_update: true` of `mode: update`")
        elif self.effective_mode == "mirror" and not self.delete_removed:
            # a person who leaves the model: `_update: true` and each mapped attribute cleared
            removal = len(self.attributes) + 1
            if removal > count:
                count = removal
                added = [
                    "the `_update: true` that clears a person who leaves the model in "
                    "`mode: mirror`"
                ]
        return count, added

    @model_validator(mode="after")
    def _zoned_constants(self) -> SyncConfig:
        """The `timestamp` and `date` constants read in the sync's own `timezone`
        (:meth:`FieldConfig.in_time_zone`); the loader does so again for a source's zone."""
        if self.timezone is not None:
            for key, value in self._constants_in(self.timezone).items():
                object.__setattr__(self, key, value)  # frozen once validated
        return self

    def _constants_in(self, zone: str | None) -> dict[str, Any]:
        """The field maps (and `on_change` rules) whose constants read otherwise in ``zone``,
        read in it: an update for this sync (empty when none does)."""

        def zoned(fields: dict[str, FieldConfig]) -> dict[str, FieldConfig] | None:
            out = {name: spec.in_time_zone(zone) for name, spec in fields.items()}
            return out if any(out[n] is not fields[n] for n in fields) else None

        update: dict[str, Any] = {}
        for key in ("attributes", "relationship_attributes", "properties"):
            fields = zoned(getattr(self, key))
            if fields is not None:
                update[key] = fields
        rules = [(rule, zoned(rule.properties)) for rule in self.on_change]
        if any(fields is not None for _, fields in rules):
            update["on_change"] = [
                rule if fields is None else rule.model_copy(update={"properties": fields})
                for rule, fields in rules
            ]
        return update

    def in_time_zone(self, zone: str | None) -> SyncConfig:
        """This sync reading its naive timestamps, and its constants' times without an offset,
        in ``zone`` (a source's `timezone`, for a sync that names none)."""
        return self.model_copy(update={"timezone": zone, **self._constants_in(zone)})

    @model_validator(mode="after")
    def _one_email(self) -> SyncConfig:
        """A people sync identified by email sends that email as the `email` attribute too: an
        `email` attribute of another column would replace it (the identify_by email was never
        sent, and the person's email became the other column's)."""
        column = self.identify_by.get("email")
        spec = self.attributes.get("email")
        if self.kind != "people" or column is None or spec is None:
            return self
        if reads_identify_email(spec, column):
            return self  # the same email: sent once, as identify_by cleans it
        if spec.value is not None:
            what = f"the constant `{spec.value}`"
        elif (spec.column or "email") != column:
            what = f"column `{spec.column or 'email'}`"
        else:  # the same column, as a number or a boolean...
            what = f"column `{column}` as `type: {spec.type}`"
        raise _error_at(
            ("attributes", "email"),
            f"attribute `email` ({what}) and `identify_by: {{email: {column}}}` both set the "
            f"person's `email`, and the attribute would replace the identify_by email, which "
            "would never be sent. Rename the attribute (e.g. `contact_email: ...`), or take "
            "`email` out of `identify_by` if the attribute is the email to keep",
        )

    @property
    def identify_attributes(self) -> set[str]:
        """The attribute names a people sync's identify carries: its `attributes`, and the
        `email` it sends as an attribute too when it identifies by email."""
        names = set(self.attributes)
        if "email" in self.identify_by:
            names.add("email")
        return names

    @property
    def effective_mode(self) -> str:
        """The mode in force: as configured, else `mirror` for relationships, `upsert` others."""
        if self.mode is not None:
            return self.mode
        return "mirror" if self.kind == "relationships" else "upsert"

    @property
    def key_columns(self) -> list[str]:
        if self.primary_key is None:
            return []
        return [self.primary_key] if isinstance(self.primary_key, str) else list(self.primary_key)


# --------------------------------------------------------------------------- project


def plain_sql_name(value: str) -> str:
    """``value`` if it is a schema name every warehouse takes unquoted (letters, digits and
    `_`, not starting with a digit); else a ValueError saying so. An empty one is let through
    to be refused as every empty value is (:func:`lockgate.project.loader.refuse_blank`)."""
    if value.strip() and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        fixed = re.sub(r"[^A-Za-z0-9_]+", "_", value.strip()).strip("_") or "name"
        fixed = fixed if re.match(r"[A-Za-z_]", fixed) else f"_{fixed}"
        raise ValueError(
            f"`{value}` is not a plain SQL name: use letters, digits and `_`, not starting "
            f"with a digit (e.g. `{fixed}`)"
        )
    return value


class WebhooksConfig(Placed):
    """Customer.io reporting webhooks received and loaded into the warehouse."""

    warehouse: str | None = None
    """Source name to load into; default: the project's first DuckDB or Postgres source."""
    dataset: str = "customerio"
    """Schema/dataset the engagement tables are written to: a plain SQL name (letters, digits
    and `_`, not starting with a digit)."""
    signing_key: Annotated[str, Secret("CUSTOMERIO_WEBHOOK_SIGNING_KEY")] = (
        "${CUSTOMERIO_WEBHOOK_SIGNING_KEY}"
    )
    """The reporting webhook's signing key, as an env reference (secret)."""
    replay_window: int = Field(default=300, ge=1)
    """Reject signatures whose `X-CIO-Timestamp` is further than this many seconds from now."""
    spool: str = ".lockgate/webhooks"
    """Folder where accepted events are made durable before they are loaded; relative to the
    project folder unless absolute. `${ENV_VAR}` references and a leading `~` are expanded, as
    in `state:`."""

    @field_validator("spool")
    @classmethod
    def _spool_refs(cls, value: str) -> str:
        return check_path_refs(value, "spool")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        # dlt makes any other name a plain one (`cio-events` is `cio_events`): the tables went
        # where the engagement model (and the user's SQL) written with the name did not look
        return plain_sql_name(value)


class DefaultsConfig(StrictModel):
    """Defaults applied to every sync unless it says otherwise."""

    on_null: NullPolicy = "skip"
    """What a null attribute does in a people, objects or relationships sync that sets no
    `on_null` of its own: by default a null never overwrites a value unless a field says so."""
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig)
    """Circuit breakers for every sync (off unless set here or in a sync; docs/guardrails.md)."""


AlertOn = Literal["failed", "partial", "recovered", "warning"]
ALERT_OUTCOMES: tuple[AlertOn, ...] = ("failed", "partial", "recovered", "warning")


class AlertConfig(Placed):
    """Where to say that a run failed (`alerts:` in lockgate.yml; docs/sync.md "Alerts")."""

    url: Annotated[str, Secret("SLACK_WEBHOOK_URL")]
    """The endpoint to POST to, as an env reference (`${SLACK_WEBHOOK_URL}`): a webhook URL
    carries its token, so it is a secret."""
    format: Literal["json", "slack"] = "json"
    """`json`: the run's outcome as a JSON object; `slack`: a Slack incoming-webhook message
    (`{"text": ...}`), which Microsoft Teams and Discord's Slack-compatible hooks also take."""
    on: list[AlertOn] = Field(default_factory=lambda: list(ALERT_OUTCOMES))
    """Which outcomes: `failed` (an error or a guardrail stopped the run), `partial` (records
    rejected by Customer.io or dead-lettered), `recovered` (a success after either),
    `warning` (a success with a guardrail at its `warn_at` share of the limit)."""
    syncs: list[str] | None = None
    """Only these syncs' runs; unset, every sync's."""
    every_run: bool = False
    """Alert every failed, partial or warning run. Unset, only the first of a streak (the sync's
    previous run ended otherwise): a sync scheduled every 15 minutes that stays broken alerts
    once, then once more when it recovers."""


class RunLogConfig(StrictModel):
    """Every run written to warehouse tables (`run_log:` in lockgate.yml; docs/sync.md "The run
    log in the warehouse"): `sync_runs` (one row per run: outcome, mode, counts, guardrails
    breached, error, the whole report as JSON) and `sync_rejected_rows` (the rows a run
    rejected, with the stage and reason), to query and chart next to the models they came
    from."""

    warehouse: str | None = None
    """Source to write into: a DuckDB file, Postgres, Redshift or Snowflake (not yet BigQuery);
    default: the project's first such source."""
    dataset: str = "lockgate"
    """Schema the tables are written to."""
    records: bool = False
    """Also write `sync_records`: one row per record sent, with its key, identifiers, the call
    and Customer.io's answer (what `lockgate history` shows, in SQL). A full sync writes one row
    per record."""

    @field_validator("dataset")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return plain_sql_name(value)


class ProjectConfig(StrictModel):
    """`lockgate.yml`: connections, identity rules, defaults."""

    name: str
    """Project name."""
    state: str = ".lockgate"
    """Where snapshots, ledgers and run history live: a folder, relative to the project folder
    unless absolute. `${ENV_VAR}` references and a leading `~` are expanded when a command
    needs the state (`${LOCKGATE_STATE_DIR}`, `~/lockgate/crm`): a variable not set is then an
    error."""
    history_days: int | None = Field(default=90, ge=1)
    """Days of per-record history (`lockgate history`) and rejected rows kept; older ones are
    dropped at the end of each run. `null` keeps everything. Snapshots and event ledgers are
    never dropped: they are what keeps every send exact."""
    sources: dict[str, SourceConfig]
    """Warehouses by name."""
    destinations: dict[str, DestinationConfig] = Field(
        default_factory=lambda: {"customerio": CustomerIODestinationConfig()}
    )
    """Destinations by name (default: one Customer.io destination configured from the env)."""
    identity: IdentityConfig | None = None
    """Identity resolution rules (see docs/identity.md)."""
    webhooks: WebhooksConfig | None = None
    """Reporting webhooks into the warehouse (see docs/webhooks.md)."""
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)
    """Defaults for every sync."""
    alerts: list[AlertConfig] = Field(default_factory=list)
    """Endpoints told when a `lockgate sync` or `lockgate schedule` run fails, is partial, or
    recovers (a Slack webhook, or any URL taking JSON)."""
    run_log: RunLogConfig | None = None
    """Write every run, and the rows it rejected, to warehouse tables (off unless set)."""

    @field_validator("state")
    @classmethod
    def _state_refs(cls, value: str) -> str:
        return check_path_refs(value, "state")

    @model_validator(mode="after")
    def _nonempty(self) -> ProjectConfig:
        if not self.sources:
            raise ValueError("declare at least one source under `sources:`")
        return self


#: the keys whose values are secrets (a warehouse's `url` and `password`, Customer.io's
#: `api_key` and `app_api_key`, the reporting webhook's `signing_key`, an alert's `url`), read
#: from the fields marked :class:`Secret`
SECRET_KEYS = frozenset(secret_fields(ProjectConfig))
