"""A Python client for the ``/_emulator/`` inspection API of an emulator in another process.

It returns the same frozen types as the in-process accessors of
:class:`~lockgate.emulator.Emulator`.

Example::

    emu = EmulatorInspector("http://127.0.0.1:8765")
    assert emu.person(id="42").attributes["plan"] == "pro"
"""

from __future__ import annotations

from typing import Any

import httpx

from lockgate.emulator.models import (
    Activity,
    Event,
    Merge,
    Object,
    Person,
    Relationship,
    RequestRecord,
)
from lockgate.emulator.runtime import Stats


class EmulatorInspector:
    """Read (and reset) a running emulator's state over HTTP."""

    def __init__(self, base_url: str, *, verify: bool | str = True, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, verify=verify, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> EmulatorInspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, name: str, **params: str) -> Any:
        response = self._client.get(f"/_emulator/{name}", params=params)
        response.raise_for_status()
        return response.json()

    def people(self) -> list[Person]:
        return [Person.from_json(p) for p in self._get("people")["people"]]

    def person(
        self,
        *,
        id: str | None = None,
        email: str | None = None,
        cio_id: str | None = None,
        phone: str | None = None,
    ) -> Person | None:
        """The person with this identifier (email case-insensitive), or None."""
        given = {
            k: v
            for k, v in (("id", id), ("email", email), ("cio_id", cio_id), ("phone", phone))
            if v is not None
        }
        if len(given) != 1:
            raise TypeError("person() takes exactly one of id=, email=, cio_id=, phone=")
        rows = self._get("people", **given)["people"]
        return Person.from_json(rows[0]) if rows else None

    def events(self, person: str | Person | None = None) -> list[Event]:
        cio = person.cio_id if isinstance(person, Person) else person
        params = {"person": cio} if cio else {}
        return [Event.from_json(e) for e in self._get("events", **params)["events"]]

    def objects(self) -> list[Object]:
        return [Object.from_json(o) for o in self._get("objects")["objects"]]

    def relationships(self) -> list[Relationship]:
        return [Relationship.from_json(r) for r in self._get("relationships")["relationships"]]

    def merges(self) -> list[Merge]:
        return [Merge.from_json(m) for m in self._get("merges")["merges"]]

    def activity_log(self) -> list[Activity]:
        return [Activity.from_json(a) for a in self._get("activity")["activity"]]

    def request_log(self) -> list[RequestRecord]:
        return [RequestRecord.from_json(r) for r in self._get("requests")["requests"]]

    @property
    def stats(self) -> Stats:
        return Stats.from_json(self._get("stats"))

    def reset(self) -> None:
        self._client.post("/_emulator/reset").raise_for_status()
