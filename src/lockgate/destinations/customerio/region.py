"""The workspace behind a set of Track credentials: `GET /api/v1/accounts/region`.

Customer.io answers it on either region's host with the workspace's region and id, or 401 for
wrong credentials (reference §1). A sync asks once per command before its first request that
carries people's data (:func:`check_before_sending`): an EU workspace's records sent to the US
host are redirected, but they have passed through US servers by then, which a team keeping
its data in the EU must not find out from a redirect error. `lockgate validate --connect`
asks too, to check the credentials without sending anything.

Example::

    check_before_sending(settings)  # raises on refused credentials or the wrong region
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from lockgate.destinations.customerio.settings import CustomerIOSettings, tls_verify
from lockgate.errors import DestinationError

REGION_PATH = "/api/v1/accounts/region"

_passed: set[tuple[str, str, str]] = set()
"""(Track URL, site id, region) already checked by this process."""


@dataclass(frozen=True)
class Workspace:
    region: str
    id: object


def ask(settings: CustomerIOSettings, *, timeout: float = 10.0) -> httpx.Response:
    """The raw answer (network errors raise :class:`httpx.HTTPError`)."""
    return httpx.get(
        settings.track_base + REGION_PATH,
        auth=(settings.site_id, settings.api_key),
        timeout=timeout,
        verify=tls_verify(settings.track_base),
    )


def workspace(answer: httpx.Response) -> Workspace | None:
    """The workspace a 200 answer names; None for any other answer or body."""
    if answer.status_code != 200:
        return None
    try:
        body = answer.json()
        return Workspace(str(body["region"]), body.get("environment_id"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def wrong_region(settings: CustomerIOSettings, found: str) -> DestinationError:
    return DestinationError(
        f"the workspace is in the `{found}` region, but Lockgate is set to `{settings.region}`: "
        "its data would pass through the other region's host, and App API reads would go to "
        "the wrong one",
        hint=f"set `region: {found}` in lockgate.yml's destination (or, when lockgate.yml "
        f"sets no region, CUSTOMERIO_REGION={found})",
    )


def check_before_sending(settings: CustomerIOSettings) -> None:
    """Raise before any record is sent when Customer.io refuses the credentials (401) or the
    workspace is in another region than configured. Anything else (unreachable, 5xx, a proxy
    that does not know or allow the path) is left to delivery, which retries and reports it."""
    key = (settings.track_base, settings.site_id, settings.region)
    if key in _passed or not settings.site_id or not settings.api_key:
        return
    try:
        answer = ask(settings)
    except httpx.HTTPError:
        return
    # 401 is Customer.io's answer to wrong credentials; a 403 may be a proxy in front of it
    # that only lets the batch path through, so that one is left to the batch's own answer
    if answer.status_code == 401:
        from lockgate.destinations.customerio.client import refused_credentials

        raise refused_credentials(answer.status_code, settings.track_shown)
    found = workspace(answer)
    if found is None:
        return
    if found.region != settings.region:
        raise wrong_region(settings, found.region)
    _passed.add(key)
