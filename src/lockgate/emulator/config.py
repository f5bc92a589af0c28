"""Emulator settings: credentials, workspace shape, switches for the reference's open questions.

Every field has a default, so ``EmulatorConfig()`` is a working US workspace in id+email mode with
the credentials below. The switches named after the reference (``customerio-api.md`` section 10)
say which side of each documented conflict the emulator takes; ``docs/emulator.md`` lists them.

Example::

    config = EmulatorConfig(track_rate_limit=100.0, faults=FaultConfig(error_5xx=0.1, seed=7))
    emu = Emulator(config)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from lockgate.errors import ConfigError

#: The four API surfaces; fault overrides and rate limits are keyed by these names.
SURFACES = ("track_v1", "track_v2", "pipelines", "app")

DEFAULT_SITE_ID = "lockgate-site"
DEFAULT_API_KEY = "lockgate-track-key"
DEFAULT_WRITE_KEY = "lockgate-write-key"
DEFAULT_APP_API_KEY = "lockgate-app-key"


@dataclass(frozen=True)
class FaultRates:
    """Fractions (0..1) of requests that fail in each way, plus added latency."""

    error_5xx: float = 0.0
    """Answer 503 (Service Unavailable) without applying the request."""
    error_429: float = 0.0
    """Answer 429 with ``Retry-After`` without applying the request."""
    timeout: float = 0.0
    """Hold the request for ``FaultConfig.timeout_s`` then drop the connection, nothing applied."""
    reset: float = 0.0
    """Close the connection without any response, nothing applied."""
    latency_ms: int = 0
    """Added to every request of the surface before it is handled (slow responses)."""

    def __post_init__(self) -> None:
        _check_fractions(self.error_5xx, self.error_429, self.timeout, self.reset)

    def any(self) -> bool:
        return bool(self.error_5xx or self.error_429 or self.timeout or self.reset)


def _check_fractions(*values: float) -> None:
    if any(not 0.0 <= v <= 1.0 for v in values) or sum(values) > 1.0:
        raise ConfigError(
            f"fault fractions `{', '.join(str(v) for v in values)}` are not fractions of requests",
            hint="give each of 5xx/429/timeout/reset between 0 and 1, together at most 1",
        )


@dataclass(frozen=True)
class FaultConfig:
    """Seeded fault injection. The same seed and request sequence give the same faults.

    The top-level rates apply to every request unless ``overrides`` names its route (the path
    template, e.g. ``/api/v2/batch`` or ``/api/v1/customers/{identifier}``) or its surface
    (``track_v1``, ``track_v2``, ``pipelines``, ``app``). The ``/_emulator/`` inspection API
    never gets faults.
    """

    error_5xx: float = 0.0
    error_429: float = 0.0
    timeout: float = 0.0
    reset: float = 0.0
    latency_ms: int = 0
    answer_latency_ms: int = 0
    """Added after an API request is handled, before its answer is sent: the workspace has
    taken the request and the answer is slow to arrive (``latency_ms`` comes before
    handling). A client stopped meanwhile has had its request applied without hearing so."""
    overrides: Mapping[str, FaultRates] = field(default_factory=dict)
    """Per-route or per-surface rates, replacing the top-level ones there."""
    seed: int = 0
    """Seed of the ``random.Random`` that draws faults, so a run repeats exactly."""
    timeout_s: float = 15.0
    """How long a ``timeout`` fault holds the request before dropping it (set above the client's
    read timeout)."""
    retry_after_s: int = 1
    """``Retry-After`` seconds sent with injected 429s and rate-limit 429s."""
    applied_then_failed: bool = False
    """When true, 5xx/429/timeout/reset faults happen *after* the request was fully applied (for
    idempotency tests). When false (default) a faulted request applied nothing."""
    reject_people: frozenset[str] = frozenset()
    """Person identifier values (an ``id``, an ``email`` or a ``cio_id``, as sent) whose Track v2
    person operations are refused as invalid items: a 207 error entry in a batch (400 from
    ``/entity``), nothing of the operation applied, the other items accepted. It stands for a
    record the workspace refuses for a reason the sender cannot check beforehand."""

    def __post_init__(self) -> None:
        _check_fractions(self.error_5xx, self.error_429, self.timeout, self.reset)
        if isinstance(self.reject_people, str):
            raise ConfigError(
                f"`reject_people` is the text `{self.reject_people}`, not a set of identifiers",
                hint='give a set of identifier values, e.g. frozenset({"42"})',
            )
        object.__setattr__(self, "reject_people", frozenset(self.reject_people))

    def rates_for(self, surface: str, route: str | None = None) -> FaultRates:
        """Rates for a route (e.g. ``/api/v2/batch``), else its surface, else the defaults."""
        if route is not None and route in self.overrides:
            return self.overrides[route]
        if surface in self.overrides:
            return self.overrides[surface]
        return FaultRates(self.error_5xx, self.error_429, self.timeout, self.reset, self.latency_ms)


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything that shapes one emulated Customer.io workspace.

    Example::

        EmulatorConfig(site_id="s", api_key="k", workspace_mode="id")
    """

    site_id: str = DEFAULT_SITE_ID
    """Track API Basic-auth username (``site_id:api_key``)."""
    api_key: str = DEFAULT_API_KEY
    """Track API key (Basic-auth password)."""
    write_key: str = DEFAULT_WRITE_KEY
    """Pipelines source write key (Basic-auth username, empty password)."""
    app_api_key: str = DEFAULT_APP_API_KEY
    """App API bearer token."""
    workspace_mode: Literal["id_email", "id", "email"] = "id_email"
    """Which identifiers people have: id+email (default), id-only ("classic") or email-only."""
    phone_identifiers: bool = True
    """Accept ``phone`` as a v2 person identifier."""
    region: Literal["us", "eu"] = "us"
    """Answer of ``GET /api/v1/accounts/region``."""
    environment_id: int = 1
    """Workspace id reported by the region endpoint and ``/v1/workspaces``."""
    object_types: Mapping[str, str] = field(default_factory=lambda: {"1": "Companies"})
    """Pre-registered object types (id string -> name). Objects of other types are accepted and not
    applied (logged in the activity log), like Track's asynchronous failures."""
    v1_error_shape: Literal["both", "error", "errors"] = "both"
    """Conflict 1: Track v1 400 bodies carry ``meta.error`` (docs page), ``meta.errors`` (spec), or
    both (default)."""
    track_rate_limit: float | None = 1000.0
    """Conflict 2: Track requests/second (token bucket, one second of burst). The current spec
    says 1000; set 100 to model older docs; ``None`` disables."""
    pipelines_rate_limit: float | None = 1000.0
    """Pipelines requests/second (the spec: 3000 per 3 s); ``None`` disables."""
    app_rate_limit: float | None = 10.0
    """App API requests/second (429 "over the 10-per-second limit"); ``None`` disables."""
    require_ulid_event_ids: bool = False
    """Conflict 5: reject event ``id`` values that are not ULIDs (default: any non-empty string)."""
    pipelines_message_id_dedupe: bool = True
    """Conflict 4: drop Pipelines calls whose ``messageId`` was already received."""
    pipelines_alias: Literal["merge", "ignore"] = "merge"
    """Conflict 7: ``alias`` merges ``previousId`` into ``userId`` (default) or is only logged."""
    group_object_attributes: Literal["both", "traits", "objectAttributes"] = "both"
    """Conflict 6: where ``group`` object attributes come from; ``both`` prefers
    ``traits.objectAttributes`` when present, else the remaining ``traits``."""
    app_cio_id_prefix: Literal["either", "prefixed", "bare"] = "either"
    """Conflict 9: with ``id_type=cio_id`` the App API accepts ``cio_…``, bare, or both."""
    null_removes_person_attributes: bool = True
    """Conflict 10: ``null`` or ``""`` removes a person attribute (always for objects)."""
    allow_email_change_via_id: bool = True
    """Workspace setting: identifying by ``id`` with a new ``email`` changes the email."""
    anonymous_merge_days: int = 30
    """Anonymous events newer than this attach to a person identified with them."""
    merge_event_days: int = 30
    """A merge carries over the secondary's events of this many most recent days."""
    faults: FaultConfig = field(default_factory=FaultConfig)
    """Seeded fault injection; off by default."""
