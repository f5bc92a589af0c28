"""Read-back from Customer.io's App API: people, attributes, objects, relationships.

The engine uses these calls to reconcile what it delivered. Auth is
``Authorization: Bearer <App API key>``; requests are paced at 10/s (the App API's
limit) and a 429 or 5xx is retried after its ``Retry-After`` (else with backoff). Unknown
resources give ``None``, not an exception::

    app = AppAPIClient(CustomerIOSettings.from_env())
    person = await app.get_person_attributes("42")     # {"id": "42", "attributes": {...}} or None
    await app.aclose()

Note that Customer.io returns every stored attribute value as a string.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from lockgate import __version__
from lockgate.destinations.customerio.pacing import TokenBucket, backoff, parse_retry_after
from lockgate.destinations.customerio.settings import CustomerIOSettings, tls_verify
from lockgate.errors import (
    ConfigError,
    DestinationAuthError,
    DestinationError,
    DestinationTransientError,
)

ATTRIBUTES_CHUNK = 100
"""``POST /v1/customers/attributes`` takes 1 to 100 ids per request."""
ACTIVITIES_PAGE = 100
"""``GET /v1/customers/{id}/activities`` returns at most 100 activities per page."""
SEARCH_PAGE = 1000
"""``POST /v1/customers`` returns at most 1000 people per page."""

JSON = dict[str, Any]


def _path_id(value: str | int) -> str:
    # Percent-encode everything, like the official clients: ids may hold `/`, `@`, `+`.
    return quote(str(value), safe="")


class AppAPIClient:
    """Async App API client (Bearer auth, 10 req/s, retries 429/5xx); 404 gives ``None``.

    Example::

        async with AppAPIClient(settings) as app:
            people = await app.get_people_attributes(["1", "2"])
    """

    def __init__(
        self,
        settings: CustomerIOSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not settings.app_api_key:
            raise ConfigError(
                "the Customer.io App API key is missing",
                hint="set CUSTOMERIO_APP_API_KEY (Settings → API credentials → App API keys)",
            )
        self.settings = settings
        self._transport = transport
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._bucket = TokenBucket(settings.app_rate_limit, 1)
        self._http: httpx.AsyncClient | None = None
        self.requests = 0
        self.throttled = 0

    def __repr__(self) -> str:
        return f"AppAPIClient({self.settings!r})"

    async def __aenter__(self) -> AppAPIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.settings.app_base,
                verify=tls_verify(self.settings.app_base),
                headers={
                    "Authorization": f"Bearer {self.settings.app_api_key}",
                    "User-Agent": f"lockgate/{__version__}",
                },
                timeout=httpx.Timeout(self.settings.timeout),
                transport=self._transport,
            )
        return self._http

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: JSON | None = None,
    ) -> Any:
        """One call with pacing and retries; returns parsed JSON, or ``None`` on 404."""
        s = self.settings
        content = None if body is None else orjson.dumps(body)
        headers = None if body is None else {"Content-Type": "application/json"}
        attempt = 0
        while True:
            attempt += 1
            await self._bucket.acquire(self._clock, self._sleep)
            self.requests += 1
            retry_after: float | None = None
            try:
                response = await self._client().request(
                    method, path, params=params, content=content, headers=headers
                )
            except httpx.TransportError as exc:
                error = DestinationTransientError(
                    f"App API {method} {path}: {type(exc).__name__}: {exc or 'no detail'}"
                )
            else:
                status = response.status_code
                if status == 404:
                    return None
                if status in (401, 403):
                    raise DestinationAuthError(
                        f"Customer.io refused the App API key (HTTP {status})",
                        status=status,
                        hint="check CUSTOMERIO_APP_API_KEY (an App API key, not a Track key) "
                        "and CUSTOMERIO_REGION",
                    )
                if 200 <= status < 300:
                    try:
                        return orjson.loads(response.content) if response.content else {}
                    except orjson.JSONDecodeError:
                        raise DestinationError(
                            f"App API {method} {path} answered {status} with a body that is not "
                            f"JSON: {response.text[:200]!r}",
                            status=status,
                            hint="check CUSTOMERIO_APP_URL (unset it to use the region's host)",
                        ) from None
                text = response.text[:300]
                if status != 429 and status < 500:
                    raise DestinationError(
                        f"App API {method} {path} answered HTTP {status}: {text}", status=status
                    )
                if status == 429:
                    self.throttled += 1
                # a 503 saying how long to wait is honoured as a 429 is
                retry_after = parse_retry_after(
                    response.headers.get("retry-after"), now=time.time(), cap=s.retry_after_cap
                )
                error = DestinationTransientError(
                    f"App API {method} {path} answered HTTP {status}: {text}",
                    status=status,
                    retry_after=retry_after,
                )
            if attempt > s.max_retries:
                raise error
            if retry_after:  # `Retry-After: 0` (or a past date) falls back to the backoff
                now = self._clock()
                self._bucket.defer(now, now + retry_after)
                delay = retry_after
            else:
                delay = backoff(attempt, base=s.backoff_base, cap=s.backoff_cap, rng=self._rng)
            await self._sleep(delay)

    # -- people ---------------------------------------------------------------------------

    async def get_person_attributes(self, id: str, id_type: str = "id") -> JSON | None:
        """``GET /v1/customers/{id}/attributes``: the person's ``customer`` object, or ``None``.

        The result holds ``id``, ``identifiers``, ``attributes`` (all values strings),
        ``unsubscribed`` and ``devices`` as Customer.io sends them.
        """
        doc = await self._request(
            "GET", f"/v1/customers/{_path_id(id)}/attributes", params={"id_type": id_type}
        )
        if doc is None:
            return None
        customer = doc.get("customer")
        return customer if isinstance(customer, dict) else None

    async def find_people_by_email(self, email: str) -> list[JSON]:
        """``GET /v1/customers?email=``: every person with that email (there may be several)."""
        doc = await self._request("GET", "/v1/customers", params={"email": email})
        if doc is None:
            return []
        results = doc.get("results")
        return list(results) if isinstance(results, list) else []

    async def get_people_attributes(self, ids: Iterable[str], id_type: str = "id") -> list[JSON]:
        """``POST /v1/customers/attributes`` in chunks of 100; unknown ids are left out.

        Gives each person's ``customer`` object, as :meth:`get_person_attributes` does: the
        App API wraps every item of ``customers`` in ``{"customer": {...}}`` (official spec,
        getPeopleById); a bare item is taken as it is.
        """
        wanted = [str(i) for i in ids]
        found: list[JSON] = []
        for start in range(0, len(wanted), ATTRIBUTES_CHUNK):
            chunk = wanted[start : start + ATTRIBUTES_CHUNK]
            doc = await self._request(
                "POST",
                "/v1/customers/attributes",
                params={"id_type": id_type},
                body={"ids": chunk},
            )
            if doc and isinstance(doc.get("customers"), list):
                for item in doc["customers"]:
                    customer = item.get("customer", item) if isinstance(item, dict) else None
                    if isinstance(customer, dict):
                        found.append(customer)
        return found

    async def search_people(
        self, filter: JSON, *, page_size: int = SEARCH_PAGE
    ) -> AsyncIterator[JSON]:
        """``POST /v1/customers`` with an audience filter, following ``next`` to the end.

        Yields one ``{"id", "email", "cio_id"}`` identifiers dict per person::

            async for who in app.search_people({"attribute": {"field": "plan",
                                                              "operator": "eq", "value": "pro"}}):
                ...
        """
        start: str | None = None
        while True:
            params: dict[str, Any] = {"limit": min(page_size, SEARCH_PAGE)}
            if start:
                params["start"] = start
            doc = await self._request(
                "POST", "/v1/customers", params=params, body={"filter": filter}
            )
            if not doc:
                return
            identifiers = doc.get("identifiers")
            if isinstance(identifiers, list):
                for who in identifiers:
                    yield who
            else:
                for id in doc.get("ids") or []:
                    yield {"id": id}
            start = doc.get("next") or None
            if not start:
                return

    async def get_person_relationships(self, id: str, id_type: str = "id") -> list[JSON] | None:
        """``GET /v1/customers/{id}/relationships``: the person's objects, or ``None``."""
        doc = await self._request(
            "GET", f"/v1/customers/{_path_id(id)}/relationships", params={"id_type": id_type}
        )
        if doc is None:
            return None
        for key in ("cio_relationships", "relationships", "objects"):
            if isinstance(doc.get(key), list):
                return list(doc[key])
        return []

    async def get_person_activities(
        self,
        id: str,
        id_type: str = "id",
        *,
        type: str | None = None,
        name: str | None = None,
        start: str | None = None,
        limit: int = ACTIVITIES_PAGE,
    ) -> tuple[list[JSON], str] | None:
        """``GET /v1/customers/{id}/activities``: one page of the person's activities (``type``
        and ``name`` filter them) and the ``next`` token ("" after the last page), or
        ``None`` when there is no such person. Customer.io guarantees 30 days of them."""
        params: dict[str, Any] = {"id_type": id_type, "limit": limit}
        for param, value in (("type", type), ("name", name), ("start", start)):
            if value:
                params[param] = value
        doc = await self._request("GET", f"/v1/customers/{_path_id(id)}/activities", params=params)
        if doc is None:
            return None
        rows = doc.get("activities")
        return (
            [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else [],
            str(doc.get("next") or ""),
        )

    # -- objects --------------------------------------------------------------------------

    async def get_object_attributes(
        self, type_id: int | str, object_id: str, id_type: str = "object_id"
    ) -> JSON | None:
        """``GET /v1/objects/{type_id}/{object_id}/attributes``: the object, or ``None``."""
        doc = await self._request(
            "GET",
            f"/v1/objects/{int(type_id)}/{_path_id(object_id)}/attributes",
            params={"id_type": id_type},
        )
        if doc is None:
            return None
        obj = doc.get("object", doc)
        return obj if isinstance(obj, dict) else None
