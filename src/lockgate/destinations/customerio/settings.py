"""Connection settings for Customer.io: credentials, region, limits, retry policy.

Credentials come only from here, and here only from the caller or the environment
(:meth:`CustomerIOSettings.from_env`). Secrets are kept out of ``repr`` so they
cannot reach a log line by accident::

    settings = CustomerIOSettings.from_env()          # CUSTOMERIO_SITE_ID, ...
    settings = CustomerIOSettings("site", "key", track_url="http://127.0.0.1:8765")
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from lockgate.errors import ConfigError, without_userinfo

Region = Literal["us", "eu"]

TRACK_HOSTS: dict[str, str] = {
    "us": "https://track.customer.io",
    "eu": "https://track-eu.customer.io",
}
"""Track API (v1 and v2) base URLs per region; paths such as ``/api/v2/batch`` are appended."""

APP_HOSTS: dict[str, str] = {
    "us": "https://api.customer.io",
    "eu": "https://api-eu.customer.io",
}
"""App API base URLs per region; paths such as ``/v1/customers`` are appended."""

MAX_OP_BYTES = 32 * 1024
"""Track v2: each batch operation must be at most 32 KB once encoded."""

MAX_REQUEST_BYTES = 500_000
"""Track v2: a whole ``/api/v2/batch`` body must be under 500 KB."""

DEFAULT_BATCH_BYTES = 499_000
"""Our default body budget: just under the 500 KB request limit."""


@dataclass(frozen=True, slots=True)
class CustomerIOSettings:
    """Everything the Customer.io clients need to know.

    ``track_url`` / ``app_url`` override the region's hosts, for the local emulator
    (``"http://127.0.0.1:8765"``) or a proxy. Rate limit is requests per second
    for the Track API; ``concurrency`` bounds the batches in flight.

    Example::

        CustomerIOSettings(site_id="abc", api_key="secret", region="eu", rate_limit=50)
    """

    site_id: str = ""
    """Track API site id (Basic-auth user name). Env: ``CUSTOMERIO_SITE_ID``."""
    api_key: str = field(default="", repr=False)
    """Track API key (Basic-auth password). Env: ``CUSTOMERIO_API_KEY``. Never logged."""
    region: Region = "us"
    """``us`` or ``eu``: picks the hosts. Env: ``CUSTOMERIO_REGION``."""
    track_url: str | None = None
    """Override for the Track base URL, without ``/api/v2``. Env: ``CUSTOMERIO_TRACK_URL``."""
    app_api_key: str = field(default="", repr=False)
    """App API bearer key for read-back. Env: ``CUSTOMERIO_APP_API_KEY``. Never logged."""
    app_url: str | None = None
    """Override for the App API base URL, without ``/v1``. Env: ``CUSTOMERIO_APP_URL``."""
    rate_limit: float = 100.0
    """Track requests per second (token bucket). Customer.io's published soft limit varies
    between 100/s and 1000/s; 100 is the safe choice."""
    rate_burst: int = 1
    """Token-bucket capacity: how many requests may leave back to back after a pause."""
    concurrency: int = 8
    """Batches in flight at once (and the HTTP keep-alive pool size)."""
    max_retries: int = 8
    """Retries per batch on 429, 5xx, timeouts and connection errors before dead-lettering."""
    stop_after_failed_batches: int = 3
    """Stop delivering (:class:`~lockgate.errors.DestinationUnavailableError`) once this many
    batches in a row failed every retry, with no batch answered in between: the destination
    is down. 0 never stops (every batch is tried and dead-lettered)."""
    timeout: float = 30.0
    """Seconds for connect, read, write and pool waits of one request."""
    max_batch_bytes: int = DEFAULT_BATCH_BYTES
    """Body size budget of one ``/api/v2/batch`` request (must stay under 500,000)."""
    max_batch_ops: int | None = None
    """Optional cap on operations per batch (Customer.io publishes none)."""
    backoff_base: float = 0.25
    """Seconds: the first retry waits up to this long (full jitter), doubling each time."""
    backoff_cap: float = 30.0
    """Seconds: the longest single backoff."""
    retry_after_cap: float = 120.0
    """Seconds: the longest ``Retry-After`` we honour; larger values are cut to this."""
    app_rate_limit: float = 10.0
    """App API requests per second (Customer.io answers 429 above 10/s)."""

    def __post_init__(self) -> None:
        if self.region not in TRACK_HOSTS:
            raise ConfigError(
                f"unknown Customer.io region `{self.region}`",
                hint="set CUSTOMERIO_REGION (or `region`) to `us` or `eu`",
            )
        if self.rate_limit <= 0 or self.app_rate_limit <= 0:
            raise ConfigError(
                f"rate limit must be positive, got `{self.rate_limit}`",
                hint="give requests per second, e.g. 100",
            )
        if self.concurrency < 1 or self.rate_burst < 1:
            raise ConfigError(
                "`concurrency` and `rate_burst` must be at least 1",
                hint="the defaults are concurrency 8 and burst 1",
            )
        if self.max_retries < 0:
            raise ConfigError(f"`max_retries` must be >= 0, got `{self.max_retries}`")
        if self.stop_after_failed_batches < 0:
            raise ConfigError(
                "`stop_after_failed_batches` must be >= 0 (0 never stops), got "
                f"`{self.stop_after_failed_batches}`"
            )
        if not MAX_OP_BYTES + 16 <= self.max_batch_bytes < MAX_REQUEST_BYTES:
            raise ConfigError(
                f"`max_batch_bytes` is `{self.max_batch_bytes}`; it must fit one 32 KB "
                f"operation and stay under Customer.io's {MAX_REQUEST_BYTES:,}-byte limit",
                hint=f"leave it at the default {DEFAULT_BATCH_BYTES:,}",
            )
        if self.max_batch_ops is not None and self.max_batch_ops < 1:
            raise ConfigError(f"`max_batch_ops` must be at least 1, got `{self.max_batch_ops}`")

    def require_track(self) -> None:
        """Raise :class:`ConfigError` when the Track credentials are missing: a client cannot
        send without them (a sync checks this before it reads its model)."""
        if not self.site_id or not self.api_key:
            raise ConfigError(
                "Customer.io Track credentials are missing",
                hint="set CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY (Settings → API credentials "
                "→ Track API keys in Customer.io)",
            )

    @property
    def track_base(self) -> str:
        """The Track base URL in use (override or region host), without a trailing slash."""
        return (self.track_url or TRACK_HOSTS[self.region]).rstrip("/")

    @property
    def app_base(self) -> str:
        """The App API base URL in use (override or region host), without a trailing slash."""
        return (self.app_url or APP_HOSTS[self.region]).rstrip("/")

    @property
    def track_shown(self) -> str:
        """:attr:`track_base` as messages show it: a proxy's user and password as `***`."""
        return without_userinfo(self.track_base)

    @property
    def app_shown(self) -> str:
        """:attr:`app_base` as messages show it: a proxy's user and password as `***`."""
        return without_userinfo(self.app_base)

    @classmethod
    def from_env(
        cls,
        prefix: str = "CUSTOMERIO_",
        *,
        environ: Mapping[str, str] | None = None,
        **overrides: object,
    ) -> CustomerIOSettings:
        """Read ``{prefix}SITE_ID``, ``API_KEY``, ``APP_API_KEY``, ``REGION``, ``TRACK_URL``
        and ``APP_URL``; keyword ``overrides`` win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "site_id": env.get(f"{prefix}SITE_ID", ""),
            "api_key": env.get(f"{prefix}API_KEY", ""),
            "app_api_key": env.get(f"{prefix}APP_API_KEY", ""),
            "region": env.get(f"{prefix}REGION", "us").strip().lower() or "us",
            "track_url": env.get(f"{prefix}TRACK_URL") or None,
            "app_url": env.get(f"{prefix}APP_URL") or None,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def verifies_tls(base_url: str) -> bool:
    """Whether a client of ``base_url`` needs certificate checks: not over plain `http://`
    (the local emulator, a proxy on loopback), where no TLS ever happens and loading the CA
    bundle was 60-100 ms of every sync that sends. Clients never follow redirects, so an
    `http://` base cannot lead to an `https://` one."""
    return not base_url.lower().startswith("http://")


def tls_verify(base_url: str) -> ssl.SSLContext | bool:
    """What an httpx client of ``base_url`` takes as ``verify``: False over plain `http://`
    (see :func:`verifies_tls`), else one certificate-checking TLS context shared by every
    client of the process. Each client building its own loaded the CA bundle again: 20-30 ms
    apiece, and a run against Customer.io opens up to four (region check, App API check,
    Track and App API clients). The context is httpx's own (`SSL_CERT_FILE` and
    `SSL_CERT_DIR` honoured), built again when either variable changes."""
    if not verifies_tls(base_url):
        return False
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """httpx's default context; the arguments only key the cache (httpx reads the same
    variables from the environment)."""
    import httpx

    return httpx.create_ssl_context()
