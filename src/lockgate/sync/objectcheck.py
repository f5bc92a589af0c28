"""Look up, before a `mirror` run clears them, the objects that left an objects sync's model.

An objects sync in `mode: mirror` (without `delete_removed`) clears the mapped attributes of
an object whose row leaves the model. Customer.io's object `identify` by type and id creates
the object when it has none (there is no `_update` for objects), so an object deleted in
Customer.io since it was delivered (by hand, or by another tool) would come back, empty,
from the clear. Identified by its ``cio_object_id`` the same `identify` is update-only: an
unknown one creates nothing.

So when the destination has an App API key, the run looks each leaving object up first
(``GET /v1/objects/{type}/{id}/attributes``, at the App API's 10 requests a second): one
Customer.io still holds is cleared by its ``cio_object_id`` (deleted between the look-up and
the clear, it stays deleted); one it no longer holds is not cleared, and the sync forgets it.
A run with no object leaving makes no App API call; a plan makes none ever.

Example::

    check = look_up(leaving, settings, console=console)
    for key, cio_object_id in check.found.items():
        ...
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx

from lockgate.console import Console
from lockgate.destinations.customerio.app_api import AppAPIClient
from lockgate.destinations.customerio.settings import CustomerIOSettings
from lockgate.errors import LockgateError, shorten

Leaving = tuple[str, str, str]
"""(record key, object type id, object id) of an object that left the model."""


@dataclass
class ObjectCheck:
    """What the look-up of the objects a run clears found."""

    found: dict[str, str] = field(default_factory=dict)
    """Record key -> the ``cio_object_id`` of each object Customer.io holds."""
    gone: list[str] = field(default_factory=list)
    """Record keys of the objects Customer.io no longer holds (deleted there since)."""
    error: str = ""
    """Why the look-up could not be done (the App API refused the key, or did not answer):
    no object was looked up, and none is cleared by this run."""


async def _look_up(
    leaving: list[Leaving],
    settings: CustomerIOSettings,
    console: Console,
    transport: httpx.AsyncBaseTransport | None,
    label: str,
) -> ObjectCheck:
    check = ObjectCheck()
    async with AppAPIClient(settings, transport=transport) as app:
        with console.progress(label, len(leaving)) as advance:
            for key, type_id, object_id in leaving:
                obj = await app.get_object_attributes(type_id, object_id)
                identifiers = (obj or {}).get("identifiers") or {}
                cio_object_id = identifiers.get("cio_object_id")
                if obj is None:
                    check.gone.append(key)
                elif cio_object_id:
                    check.found[key] = str(cio_object_id)
                else:  # an answer without the id to clear it by: not cleared, looked up again
                    raise LockgateError(
                        f"the App API gave object `{type_id}/{object_id}` without its "
                        "`cio_object_id`"
                    )
                advance(1)
    return check


def look_up(
    leaving: list[Leaving],
    settings: CustomerIOSettings,
    *,
    console: Console,
    transport: httpx.AsyncBaseTransport | None = None,
    label: str = "look up objects to clear",
) -> ObjectCheck:
    """Look up each object of ``leaving`` in Customer.io (module docstring). An App API that
    refuses the key or does not answer gives an :class:`ObjectCheck` with ``error`` set and
    nothing found: the run sends none of these clears, and the next one tries again."""
    try:
        return asyncio.run(_look_up(leaving, settings, console, transport, label))
    except (LockgateError, httpx.HTTPError) as exc:
        if isinstance(exc, LockgateError):
            why = exc.reason + (f"; {exc.hint}" if exc.hint else "")
        else:
            why = f"{type(exc).__name__}: {exc or 'no detail'}"
        return ObjectCheck(error=shorten(why))
