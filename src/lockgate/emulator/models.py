"""Frozen snapshots of the emulator's state, returned by the accessors and the inspector.

Each type converts to and from plain JSON (``to_json`` / ``from_json``) so the
``/_emulator/`` HTTP API and :class:`~lockgate.emulator.inspector.EmulatorInspector` return the
same values as the in-process accessors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

T = TypeVar("T", bound="_Json")


class _Json:
    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_json(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Device(_Json):
    """A person's push device (v1 ``device.id`` / v2 ``device.token``)."""

    id: str
    platform: str
    last_used: int | None
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Person(_Json):
    """One profile. ``attributes`` excludes the identifiers ``id``, ``email`` and ``cio_id``."""

    cio_id: str
    id: str | None
    email: str | None
    phone: str | None
    attributes: dict[str, Any]
    created_at: int
    updated_at: int
    unsubscribed: bool
    devices: tuple[Device, ...]
    anonymous_ids: tuple[str, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Person:
        data = dict(data)
        data["devices"] = tuple(Device.from_json(d) for d in data.get("devices", ()))
        data["anonymous_ids"] = tuple(data.get("anonymous_ids", ()))
        return super().from_json(data)


@dataclass(frozen=True)
class Event(_Json):
    """A stored event. ``person`` is the owner's cio_id, or None (unlinked anonymous)."""

    person: str | None
    anonymous_id: str | None
    name: str
    type: str
    id: str | None
    timestamp: int
    data: dict[str, Any]
    received_at: int
    source: str


@dataclass(frozen=True)
class Object(_Json):
    """A custom object, unique by (object_type_id, object_id)."""

    object_type_id: str
    object_id: str
    cio_object_id: str
    attributes: dict[str, Any]
    created_at: int
    updated_at: int


@dataclass(frozen=True)
class Relationship(_Json):
    """A person (or anonymous id) to object link with its own attributes."""

    person: str | None
    anonymous_id: str | None
    object_type_id: str
    object_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Merge(_Json):
    """A completed merge: ``secondary`` (deleted) folded into ``primary``."""

    primary: str
    secondary: str
    secondary_id: str | None
    secondary_email: str | None
    at: int
    source: str


@dataclass(frozen=True)
class Activity(_Json):
    """An activity-log entry: something accepted with 200 but not (fully) applied, or applied."""

    kind: str
    """e.g. ``attribute update failure``, ``merge primary not found``, ``unknown object type``."""
    message: str
    source: str
    at: float


@dataclass(frozen=True)
class RequestRecord(_Json):
    """One request that reached a handler (after routing), with the status it got."""

    method: str
    path: str
    route: str
    status: int
    body: Any
    at: float
