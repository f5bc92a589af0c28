"""Read back the emails a people sync run changed, before they are committed.

Customer.io drops, silently, an identify whose email another person holds: it answers 200,
applies nothing (neither the email nor the other attributes of the update) and records an
*attribute update failure* in the workspace's activity log, which Lockgate cannot see. The
run orders the emails its own rows pass between them (``diff.order_email_moves``), but an
email held by a person no row of the run releases (a person of another sync, one created
outside Lockgate, a row whose email is unchanged) cannot be taken by a person Customer.io
already has, and the row would be counted delivered, committed, and never sent again. A row
whose `id` Customer.io does not have yet is not dropped: the holder is given that id (renamed,
its profile written over), which a read-back by id cannot tell from a success; those rows are
checked before they are sent instead (:func:`check_new`, below).

So when the destination has an App API key, a run reads back, after delivery, the people it
gave an email they did not have (``diff.email_moves``: the first ``read_back_emails`` of them
by key), 100 a request, at the App API's 10 requests a second. A person whose email in
Customer.io is not the one sent is refused: taken out of the journal (so the snapshot keeps
what was last delivered and the next run sends the row again), recorded among the run's
rejected rows with who holds the email (``GET /v1/customers?email=``) and how to fix it. A
run that changed no email makes no App API call; a plan makes none ever.

Customer.io applies Track API updates within moments, not at once: a person that does not
hold the email sent and whose email nobody else holds is read once more after
:data:`SETTLE_SECONDS` before the row is refused.

Before delivery, :func:`check_new` looks up who holds the emails of the run's new rows, and
of its rows sent with another `id` than last delivered (``diff.new_emails``: the first
``check_new_emails`` of them by key), 100 emails a request
(``POST /v1/customers`` with an ``or`` of ``email eq`` conditions: one request answers for 100
rows, where ``GET /v1/customers?email=`` answers for one). A row whose email a person with
another non-empty `id` holds is refused before it is sent; a holder this run releases the
email from first (``diff.order_email_moves``) gives it up before the row lands. A holder
without an `id` (a lead known by email alone) is the person the row is meant to become when
Customer.io has no person with the row's `id`; when it has one (made by the app before
Lockgate's first run, or a row that left the model and came back), the identify names two
people and is dropped whole, unseen, and a row new to the snapshot is in no read-back: so the
`id`s of the rows whose email a lead holds are looked up too (``POST /v1/customers/attributes``,
100 a request: none when no lead holds a row's email), and a row whose `id` is a person is
refused before it is sent.

Example::

    check = read_back(moves, settings, console=console)
    for key, reason in check.refused:
        ...
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

from lockgate.console import Console
from lockgate.destinations.customerio.app_api import AppAPIClient
from lockgate.destinations.customerio.settings import CustomerIOSettings
from lockgate.errors import LockgateError, shorten

JSON = dict[str, Any]

SETTLE_SECONDS = 2.0
"""How long to wait before reading again a person whose email nobody else holds yet does not
hold the email sent (an update Customer.io has not applied yet)."""

Move = tuple[str, str, str, str]
"""(record key, id type, id, email as sent): a person given an email (``diff.email_moves``)."""


@dataclass
class EmailCheck:
    """What the read-back of a run's email changes found."""

    read_back: int = 0
    """People read back."""
    refused: list[tuple[str, str]] = field(default_factory=list)
    """(key, reason) of each person whose email in Customer.io is not the one sent."""
    error: str = ""
    """Why the read-back could not be done (the App API refused the key, or did not answer):
    the people were not verified."""
    unchecked: int = 0
    """With ``error`` after the emails of :func:`check_new` were looked up: how many of its
    rows, whose email a lead holds, were not looked up by `id` (``refused`` stands)."""


def _email_of(customer: dict[str, Any]) -> str | None:
    identifiers = customer.get("identifiers") or {}
    attributes = customer.get("attributes") or {}
    email = identifiers.get("email") or attributes.get("email")
    return str(email) if email else None


def _who(person: dict[str, Any]) -> str:
    """A person found by email, as the App API names them (`id`, then `cio_id`)."""
    parts = [f"{n} `{person[n]}`" for n in ("id", "cio_id") if person.get(n)]
    return ", ".join(parts) or "a person without an id"


async def _read(
    app: AppAPIClient, moves: list[Move], advance: Any
) -> dict[str, dict[str, Any] | None]:
    """Key -> the person Customer.io holds under the move's id (None when it has none)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for id_type in sorted({t for _, t, _, _ in moves}):
        ids = [i for _, t, i, _ in moves if t == id_type]
        for customer in await app.get_people_attributes(ids, id_type):
            identifiers = customer.get("identifiers") or {}
            value = identifiers.get(id_type) or (customer.get("id") if id_type == "id" else None)
            if value is not None:
                found[(id_type, str(value))] = customer
        advance(len(ids))
    return {k: found.get((t, i)) for k, t, i, _ in moves}


async def _check(
    moves: list[Move],
    settings: CustomerIOSettings,
    console: Console,
    transport: httpx.AsyncBaseTransport | None,
    settle: float,
) -> EmailCheck:
    by_key = {m[0]: m for m in moves}
    check = EmailCheck(read_back=len(moves))
    async with AppAPIClient(settings, transport=transport) as app:
        with console.progress("read back email changes", len(moves)) as advance:
            held = await _read(app, moves, advance)
            wrong = [k for k, p in held.items() if not _holds(p, by_key[k][3])]
            reasons: dict[str, str] = {}
            unheld = []
            for key in wrong:
                _, id_type, id_, email = by_key[key]
                holders = [
                    p
                    for p in await app.find_people_by_email(email)
                    if str(p.get(id_type) or "") != id_
                ]
                if holders:
                    reasons[key] = _reason(key, email, held[key], holders)
                else:
                    unheld.append(key)
            if unheld:  # not applied yet, or dropped for another reason: read once more
                await asyncio.sleep(settle)
                again = await _read(app, [by_key[k] for k in unheld], lambda n: None)
                for key in unheld:
                    if not _holds(again[key], by_key[key][3]):
                        reasons[key] = _reason(key, by_key[key][3], again[key], [])
    check.refused = [(k, reasons[k]) for k in sorted(reasons)]
    return check


def _holds(person: dict[str, Any] | None, email: str) -> bool:
    held = _email_of(person) if person is not None else None
    return held is not None and held.lower() == email.lower()


def _reason(
    key: str, email: str, person: dict[str, Any] | None, holders: list[dict[str, Any]]
) -> str:
    """Why row ``key`` was refused, and how to fix it."""
    fix = (
        "release the email in the workspace (or change it in the model), then run the sync "
        "again: the row is sent again"
    )
    if holders:
        who = "; ".join(_who(p) for p in holders[:3])
        return (
            f"row `{key}`: Customer.io dropped the update (the email and every attribute of "
            f"it): email `{shorten(email)}` is held by another person ({who}); {fix}"
        )
    now = _email_of(person) if person is not None else None
    has = f"holds `{shorten(now)}`" if now else "holds no email"
    if person is None:
        has = "has no such person"
    return (
        f"row `{key}`: Customer.io {has} for it, not `{shorten(email)}` as sent: the update was "
        f"not applied (the workspace's activity log says why); {fix}"
    )


def read_back(
    moves: list[Move],
    settings: CustomerIOSettings,
    *,
    console: Console,
    transport: httpx.AsyncBaseTransport | None = None,
    settle: float = SETTLE_SECONDS,
) -> EmailCheck:
    """Read back the people of ``moves`` through the App API; see the module's docstring.
    An App API that refuses the key or does not answer leaves them unverified (``error``),
    not refused: the updates were accepted by the Track API and most likely applied."""
    try:
        return asyncio.run(_check(moves, settings, console, transport, settle))
    except LockgateError as exc:
        return EmailCheck(error=exc.reason + (f"; {exc.hint}" if exc.hint else ""))
    except httpx.HTTPError as exc:
        return EmailCheck(error=f"{type(exc).__name__}: {exc or 'no detail'}")


NEW_CHUNK = 100
"""New rows whose emails one ``POST /v1/customers`` looks up (an ``or`` of up to two
conditions each: the email as sent and lowercased)."""

NewRow = tuple[str, str, str, frozenset[str]]
"""(record key, id, email as sent, ``"id:X"``/``"cio_id:X"`` of the people this run releases
that email from first): a new row (``diff.new_emails``)."""


def _bare(cio_id: object) -> str:
    return str(cio_id).removeprefix("cio_")


async def _holders(app: AppAPIClient, rows: list[NewRow], advance: Any) -> dict[str, list[JSON]]:
    """Lowercased email -> the people holding it, for the emails of ``rows``."""
    found: dict[str, list[JSON]] = {}
    for start in range(0, len(rows), NEW_CHUNK):
        chunk = rows[start : start + NEW_CHUNK]
        # Customer.io matches an identifying email whatever its case; a search matches the
        # value: the email as sent and lowercased cover an address stored either way
        values = dict.fromkeys(v for _, _, email, _ in chunk for v in (email, email.lower()))
        conditions = [
            {"attribute": {"field": "email", "operator": "eq", "value": v}} for v in values
        ]
        async for who in app.search_people({"or": conditions}):
            email = who.get("email")
            if email:
                found.setdefault(str(email).lower(), []).append(who)
        advance(len(chunk))
    return found


def _in_the_way(row: NewRow, holders: list[JSON]) -> tuple[list[JSON], list[JSON]]:
    """The people holding ``row``'s email that sending it would harm, unless one holds the
    row's `id` already (the row is theirs), the identity graph merges the holder into the
    row's person first (`merged:ID` among the row's released people), or this run releases
    the email from them first:
    (those with another non-empty `id`, whom it would rename; those without an `id`, leads,
    whom it renames when the row's `id` is new and who make Customer.io drop it whole when
    the `id` is a person already: :func:`check_new` looks the `id` up)."""
    _, id_, _, released = row
    if any(str(p.get("id") or "") == id_ for p in holders) or f"merged:{id_}" in released:
        return [], []
    ids = {r.removeprefix("id:") for r in released if r.startswith("id:")}
    cio_ids = {_bare(r.removeprefix("cio_id:")) for r in released if r.startswith("cio_id:")}
    held = [
        p
        for p in holders
        if str(p.get("id") or "") not in ids
        and not (p.get("cio_id") and _bare(p["cio_id"]) in cio_ids)
    ]
    return [p for p in held if p.get("id") not in (None, "")], [
        p for p in held if p.get("id") in (None, "")
    ]


async def _people_by_id(app: AppAPIClient, ids: list[str]) -> dict[str, JSON]:
    """`id` -> the person Customer.io has under it (`id`, `cio_id`), for the ``ids`` it has
    (``POST /v1/customers/attributes``, 100 a request)."""
    found: dict[str, JSON] = {}
    for customer in await app.get_people_attributes(ids, "id"):
        identifiers = customer.get("identifiers") or {}
        attributes = customer.get("attributes") or {}
        id_ = identifiers.get("id") or customer.get("id")
        if id_ not in (None, ""):
            cio_id = identifiers.get("cio_id") or attributes.get("cio_id")
            found[str(id_)] = {"id": str(id_), "cio_id": cio_id}
    return found


def _new_reason(sync: str, row: NewRow, holders: list[JSON]) -> str:
    key, id_, email, _ = row
    who = "; ".join(_who(p) for p in holders[:3])
    return (
        f"sync `{sync}`, row `{key}`: email `{shorten(email)}` is held in Customer.io by another "
        f"person ({who}); not sent: Customer.io would give that person the new id `{id_}` "
        "and write the row over its profile (or, when another person has that id, drop the "
        "update whole). Release or merge that person in Customer.io, or "
        "give your app and the sync the same id for a person, then run the sync again: the "
        "row is checked again"
    )


def _two_people_reason(sync: str, row: NewRow, leads: list[JSON], person: JSON) -> str:
    key, id_, email, _ = row
    who = "; ".join(_who(p) for p in leads[:3])
    return (
        f"sync `{sync}`, row `{key}`: email `{shorten(email)}` is held in Customer.io by a "
        f"person without an id ({who}), and `{id_}` is another person already"
        + (f" (cio_id `{person['cio_id']}`)" if person.get("cio_id") else "")
        + "; not sent: Customer.io would drop the "
        f"update whole (the email and every attribute). Merge the two people in Customer.io "
        f"(`{id_}` the primary), or release the email, then run the sync again: the row is "
        "checked again"
    )


def check_new(
    sync: str,
    rows: list[NewRow],
    settings: CustomerIOSettings,
    *,
    console: Console,
    transport: httpx.AsyncBaseTransport | None = None,
) -> EmailCheck:
    """Look up who holds the emails of the new ``rows`` (see the module's docstring);
    ``refused`` names the rows not to send, ``read_back`` counts the rows looked up. An App API
    that refuses the key or does not answer leaves them unchecked (``error``): they are sent.
    When it fails only on the `id`s of the rows whose email a lead holds, the rows refused by
    the emails' look-up stay refused and those rows are sent unchecked (``unchecked``)."""

    async def check() -> EmailCheck:
        refused = []
        leads: dict[str, list[JSON]] = {}
        async with AppAPIClient(settings, transport=transport) as app:
            with console.progress("check new people's emails", len(rows)) as advance:
                held = await _holders(app, rows, advance)
            for row in rows:
                takes, leads[row[0]] = _in_the_way(row, held.get(row[2].lower(), []))
                if takes:
                    refused.append((row[0], _new_reason(sync, row, takes)))
                    del leads[row[0]]
                elif not leads[row[0]]:
                    del leads[row[0]]
            # a lead gets the row's `id` only when no person has it yet: look those `id`s up
            try:
                people = await _people_by_id(app, [r[1] for r in rows if r[0] in leads])
            except (LockgateError, httpx.HTTPError) as exc:
                return EmailCheck(
                    read_back=len(rows),
                    refused=sorted(refused),
                    error=_why(exc),
                    unchecked=len(leads),
                )
        for row in rows:
            if row[0] in leads and row[1] in people:
                refused.append(
                    (row[0], _two_people_reason(sync, row, leads[row[0]], people[row[1]]))
                )
        return EmailCheck(read_back=len(rows), refused=sorted(refused))

    try:
        return asyncio.run(check())
    except (LockgateError, httpx.HTTPError) as exc:
        return EmailCheck(error=_why(exc))


def _why(exc: LockgateError | httpx.HTTPError) -> str:
    """Why the App API could not be read, for the report."""
    if isinstance(exc, LockgateError):
        return exc.reason + (f"; {exc.hint}" if exc.hint else "")
    return f"{type(exc).__name__}: {exc or 'no detail'}"
