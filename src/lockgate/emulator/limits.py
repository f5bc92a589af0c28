"""Limits from reference section 9 and the checks every write surface of the emulator applies.

These are the emulator's own reading of the reference; Lockgate's client keeps its own copy on
purpose, so a misreading in one is caught by the other.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
from collections.abc import Iterator
from typing import Any

import orjson

ENTITY_MAX_BYTES = 32 * 1024  # v2 /entity: request must be smaller than this
# "< 500 KB" read as 500,000 bytes, the stricter reading (Lockgate's client and
# cdp-analytics-python read it so too): a client packing up to 500 KiB would pass here and fail
BATCH_MAX_BYTES = 500_000  # v2 /batch: request must be smaller than this
OP_MAX_BYTES = 32 * 1024  # v2 batch item: at most this
PIPELINES_CALL_MAX_BYTES = 32 * 1024
PIPELINES_BATCH_MAX_BYTES = 500_000
ID_MAX_BYTES = 150
OBJECT_ID_MAX_BYTES = 150
ATTR_NAME_MAX_BYTES = 150
ATTR_VALUE_MAX_BYTES = 1000
ATTRS_MAX_COUNT = 300
OBJECT_ATTRS_MAX_TOTAL = 100 * 1024
EVENT_NAME_MAX_BYTES = 100
EVENT_DATA_MAX_BYTES = 100_000
SEGMENT_IDS_MIN, SEGMENT_IDS_MAX = 1, 1000
APP_LOOKUP_IDS_MAX = 100
APP_SEARCH_LIMIT_DEFAULT, APP_SEARCH_LIMIT_MAX = 50, 1000
# Unix seconds above this are year 2286+: almost certainly milliseconds.
MAX_UNIX_SECONDS = 10_000_000_000

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$", re.IGNORECASE)


class ItemError(Exception):
    """One invalid request or batch item: ``reason``/``field``/``message`` of a 207/400 body."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "field": self.field, "message": self.message}


#: Every byte but the digits mapped to a space, the digits to "0": a run of 19 digits, a number
#: that may lie past the 64-bit integers orjson keeps exact, is then one ``find`` (a quarter of the
#: time orjson takes to parse the body; a regular expression takes three times as long).
_DIGITS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_RUN = b"0" * 19
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def has_long_number(body: bytes) -> bool:
    """True when ``body`` holds a run of 19 digits (in a number or in a string)."""
    return body.translate(_DIGITS).find(_LONG_RUN) >= 0


def loads(body: bytes, long: bool | None = None) -> Any:
    """Parse a JSON body; integers past 64 bits stay exact Python ints.

    orjson turns them into floats (losing digits) or refuses them as "infinity"; both would
    misreport what the client sent. Bodies without a 19-digit run (``long``, computed when not
    given) take orjson's fast path. Raises :class:`orjson.JSONDecodeError` for a body that is
    not JSON.
    """
    if not (has_long_number(body) if long is None else long):
        return orjson.loads(body)
    try:
        return json.loads(body, parse_constant=_no_constant)
    except ValueError:  # not JSON (or a number of over 4300 digits): orjson says why
        return orjson.loads(body)


def dumps(value: Any) -> bytes:
    """Compact JSON of a parsed value, also when it holds an integer past 64 bits."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def nbytes(value: Any) -> int:
    """Size of an attribute value: UTF-8 bytes of a string, else of its JSON form."""
    if isinstance(value, str):
        return len(value.encode())
    return len(dumps(value))


def check_attributes(
    attrs: Any, field: str, *, total_max: int | None = None, count: bool = True
) -> dict[str, Any]:
    """Return ``attrs`` when it is an object within the name/value/count limits, else raise."""
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise ItemError("invalid", field, f"{field} must be an object")
    if count and len(attrs) > ATTRS_MAX_COUNT:
        raise ItemError(
            "limit", field, f"cannot identify more than {ATTRS_MAX_COUNT} attributes in one request"
        )
    total = 0
    for name, value in attrs.items():
        # A UTF-8 character is at most 4 bytes: short strings need no encoding to pass.
        nb = len(name) if len(name) <= 37 else len(name.encode())
        if nb > ATTR_NAME_MAX_BYTES:
            raise ItemError(
                "limit", f"{field}.{name[:40]}", "attribute name cannot be longer than 150 bytes"
            )
        tv = type(value)
        if tv is str:
            vb = len(value) if len(value) <= 250 else len(value.encode())
        elif tv is bool or value is None or (tv is int and _INT_MIN <= value <= _INT_MAX):
            vb = 8
        else:
            vb = nbytes(value)
        if vb > ATTR_VALUE_MAX_BYTES:
            raise ItemError(
                "limit",
                f"{field}.{name}",
                f"value for attribute '{name}' cannot be longer than 1000 bytes",
            )
        total += nb + vb
    if total_max is not None and total > total_max:
        raise ItemError("limit", field, f"{field} total size {total} B is over {total_max} B")
    return attrs


def check_timestamp(value: Any, field: str = "timestamp") -> int | None:
    """Track timestamps are integer unix seconds; reject floats, strings and milliseconds."""
    if value is None:
        return None
    if type(value) is not int:
        raise ItemError(
            "invalid", field, f"{field} must be an integer of unix seconds, got `{value!r}`"
        )
    if value < 0:
        raise ItemError(
            "invalid", field, f"{field} `{value}` is before 1970: unix seconds are not negative"
        )
    if value >= MAX_UNIX_SECONDS:
        raise ItemError(
            "invalid",
            field,
            f"{field} `{value}` is not unix seconds (milliseconds? divide by 1000)",
        )
    return value


def check_identifier_value(kind: str, value: Any, field: str) -> str:
    """A person identifier value: a non-empty string; ``id`` at most 150 bytes.

    A JSON number is refused like any other non-string (the spec types every identifier as a
    string, and v1 refuses a body ``"id": 42``): turning ``42`` into ``"42"`` here would let a
    client that sends numbers pass the tests and fail against Customer.io.
    """
    if not isinstance(value, str):
        raise ItemError("invalid", field, f"{kind} must be a string, got `{json.dumps(value)}`")
    if value == "":
        raise ItemError("required", field, f"{kind} cannot be an empty string")
    if kind == "id" and len(value.encode()) > ID_MAX_BYTES:
        raise ItemError("limit", field, f"id cannot be longer than {ID_MAX_BYTES} bytes")
    return value


def check_event_name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise ItemError("required", field, "event name must not be blank")
    name = value.strip()
    if len(name.encode()) > EVENT_NAME_MAX_BYTES:
        raise ItemError("limit", field, "event name cannot be longer than 100 bytes")
    return name


def check_event_data(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ItemError("invalid", field, "event data must be a hash")
    if len(dumps(value)) > EVENT_DATA_MAX_BYTES:
        raise ItemError("limit", field, "event data cannot be longer than 100000 bytes")
    return value


def check_event_id(value: Any, require_ulid: bool, field: str = "id") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value == "":
        raise ItemError("invalid", field, "event id must be a non-empty string (a ULID)")
    if require_ulid and not ULID_RE.match(value):
        raise ItemError("invalid", field, f"event id `{value}` is not a ULID")
    return value


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around a hot loop that allocates many small objects.

    Parsing and applying a 1000-op batch creates tens of thousands of dicts; with a large store
    alive, collector passes roughly double the time. Only the caller that found the collector
    enabled turns it back on, so overlapping callers in other threads leave it enabled.
    """
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
