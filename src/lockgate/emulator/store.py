"""The emulated workspace: people, events, objects, relationships, merges and the activity log.

The three write surfaces (Track v1, Track v2, Pipelines) validate their own payloads and then call
these surface-neutral operations, so the semantics of the reference (section 1.2 identify, 1.5
merge, 1.6 suppression, section 3 objects) live in one place. Every method takes ``self.lock``
(re-entrant), so a batch handler may hold it across many operations and readers in other threads
see whole requests only.

A person reference is a ``(kind, value)`` pair with kind ``id | email | phone | cio_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from lockgate.emulator.config import EmulatorConfig
from lockgate.emulator.limits import ATTRS_MAX_COUNT, OBJECT_ATTRS_MAX_TOTAL, gc_paused, nbytes
from lockgate.emulator.models import (
    Activity,
    Device,
    Event,
    Merge,
    Object,
    Person,
    Relationship,
)

Ref = tuple[str, str]
ObjRef = tuple[str, str]  # ("<object_type_id>", object_id) or ("cio_object_id", value)

_SKIP_ATTRS = frozenset(
    {"id", "email", "phone", "cio_id", "anonymous_id", "_update", "_timestamp", "cio_relationships"}
)
SUBSCRIPTION_PREFIX = "cio_subscription_preferences."
#: Attribute names with a rule of their own in :meth:`Store.identify` (kept out of, or mapped
#: onto, the person's attributes).
SPECIAL_ATTRS = _SKIP_ATTRS | {"unsubscribed", "created_at"}


def truthy_unsubscribed(value: Any) -> bool:
    """The reference's rule: any-case ``"true"``, ``true``, ``1`` or ``"1"`` mean true."""
    if value is True or (type(value) is int and value == 1):
        return True
    return isinstance(value, str) and value.strip().lower() in ("true", "1")


_CIO_ID = "e%07x"  # a person's cio_id from the store's sequence number


def cio_seq(cio_id: str) -> int | None:
    """The sequence number a person's ``cio_id`` was made from (None if it is not one).

    Only the exact form the store writes is one (``cio_seq("e000002a") == 42``; ``"E000002A"``,
    ``"e0000002a"`` and ``"e-000001"`` are None), so a lookup by cio_id finds what a lookup of
    the string would have.
    """
    if len(cio_id) < 8 or cio_id[0] != "e":
        return None
    try:
        seq = int(cio_id[1:], 16)
    except ValueError:
        return None
    return seq if seq > 0 and _CIO_ID % seq == cio_id else None


_NO_SEGMENTS: frozenset[int] = frozenset()  # shared: an empty frozenset is a new object
# shared and read-only: few people have devices or timestamped attributes, and two empty dicts
# per person are 128 bytes and two allocations each (see _P.own_devices, _P.own_attr_ts)
_NO_DEVICES: Mapping[str, Device] = MappingProxyType({})
_NO_ATTR_TS: Mapping[str, int] = MappingProxyType({})


class _P:
    __slots__ = (
        "seq", "id", "email", "phone", "attrs", "attr_ts", "created_at", "updated_at",
        "unsubscribed", "devices", "anonymous_ids", "segments",
    )  # fmt: skip

    def __init__(
        self,
        seq: int,
        now: int,
        attrs: dict[str, Any],
        id: str | None = None,
        email: str | None = None,
    ) -> None:
        # the store keys people by this number; the cio_id string is made when asked for (most
        # people are never asked: a string per person is 0.3-0.5 µs and 57 bytes)
        self.seq = seq
        self.id = id
        self.email = email
        self.phone: str | None = None
        self.attrs = attrs
        self.attr_ts = _NO_ATTR_TS
        self.created_at = now
        self.updated_at = now
        self.unsubscribed = False
        self.devices = _NO_DEVICES
        # immutable, replaced on change: few people have either, and a person who is one
        # GC-tracked object instead of three keeps collector passes short in a large store
        self.anonymous_ids: tuple[str, ...] = ()
        self.segments = _NO_SEGMENTS

    @property
    def cio_id(self) -> str:
        return _CIO_ID % self.seq

    def own_devices(self) -> dict[str, Device]:
        """The person's devices, to change (a dict of its own replaces the shared empty one)."""
        if type(self.devices) is not dict:
            self.devices = {}
        return self.devices

    def own_attr_ts(self) -> dict[str, int]:
        """The person's attribute timestamps, to change (see :meth:`own_devices`)."""
        if type(self.attr_ts) is not dict:
            self.attr_ts = {}
        return self.attr_ts

    def freeze(self) -> Person:
        return Person(
            cio_id=self.cio_id,
            id=self.id,
            email=self.email,
            phone=self.phone,
            attributes=dict(self.attrs),
            created_at=self.created_at,
            updated_at=self.updated_at,
            unsubscribed=self.unsubscribed,
            devices=tuple(self.devices.values()),
            anonymous_ids=self.anonymous_ids,
        )


class IdentifyRun:
    """Validated identifies for :meth:`Store.identify_many`, kept column by column.

    Item ``i`` is the person ``(kinds[i], values[i])`` with ``attrs[i]``; ``plain[i]`` means no
    attribute name is in SPECIAL_ATTRS except a string ``email``, none starts with
    SUBSCRIPTION_PREFIX, and no value is null or ``""``. Columns rather than a tuple per item:
    thousands of queued tuples would each be scanned by the cyclic garbage collector.
    """

    __slots__ = ("attrs", "kinds", "plain", "values")

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.values: list[str] = []
        self.attrs: list[dict[str, Any]] = []
        self.plain: list[bool] = []

    def __len__(self) -> int:
        return len(self.kinds)


class _FlushingLock:
    """A re-entrant lock that first applies the store's deferred Track v2 operations.

    Like Customer.io, the emulator accepts a v2 batch before processing it: the batch handler
    validates every operation, answers, and queues the appliers (:meth:`Store.defer`). Anyone who
    takes the store lock (every read and every other write) applies the queue first, in arrival
    order, so no reader can observe the difference.
    """

    def __init__(self, store: Store) -> None:
        self._lock = threading.RLock()
        self._store = store
        self._flushing = False

    @contextlib.contextmanager
    def without_applying(self) -> Iterator[None]:
        """Hold the lock without applying the queue on entry, nor in nested entries (for
        applying part of the queue)."""
        with self._lock:
            flushing, self._flushing = self._flushing, True
            try:
                yield
            finally:
                self._flushing = flushing

    def __enter__(self) -> _FlushingLock:
        self._lock.acquire()
        if self._store._pending and not self._flushing:
            self._flushing = True
            try:
                self._store._drain()
            finally:
                self._flushing = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


#: Deferred operations beyond this count are applied at once: back-pressure, bounding how much
#: waits and how long a read may have to wait for it (about 10 s per million on a slow core).
MAX_PENDING = 2_000_000
#: With no new batch for this long, the queue is applied in the background, a slice at a time.
IDLE_SECONDS = 0.2
IDLE_SLICE_SECONDS = 0.02
"""How long one background slice may hold the store (a request arriving waits at most that)."""


class Store:
    """All state of one emulated workspace. See the module docstring."""

    freeze_applied = False
    """Set in a process that runs nothing but this emulator (:meth:`Emulator.own_process`):
    each apply first collects the young garbage (``gc.collect(1)``), then leaves what it created
    to reference counting alone (``gc.freeze()``), so the cyclic collector never scans the
    people again: one pass over each new person (~0.5 µs) and full passes over the whole store
    as it grows. A library must not do this to its host process."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._pending: list[Callable[[Store], None]] = []
        self._pending_ops = 0
        self._pending_lock = threading.Lock()
        self._last_defer = 0.0
        self._idle_scheduled = False
        self.apply_seconds = 0.0
        self.lock = _FlushingLock(self)
        self.reset()

    def defer(self, appliers: list[Callable[[Store], None]], operations: int) -> None:
        """Queue validated operations; they are applied before the next lock holder proceeds.

        One applier may stand for many operations (a run of identifies); ``operations`` counts
        them, for the bound on what may wait.
        """
        with self._pending_lock:
            self._pending.extend(appliers)
            self._pending_ops += operations
            full = self._pending_ops >= MAX_PENDING
            self._last_defer = time.monotonic()
        if full:
            with self.lock:
                pass
        else:
            self._schedule_idle_apply()

    def _schedule_idle_apply(self) -> None:
        """Apply the queue once batches stop arriving, as Customer.io processes accepted
        requests after answering them; under a steady stream it waits for a read or the bound."""
        if self._idle_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside an event loop: the next reader applies it
            return
        self._idle_scheduled = True
        loop.call_later(IDLE_SECONDS, self._idle_apply, loop)

    def _idle_apply(self, loop: asyncio.AbstractEventLoop) -> None:
        self._idle_scheduled = False
        if not self._pending:
            return
        if time.monotonic() - self._last_defer < IDLE_SECONDS:  # still busy: look again later
            self._idle_scheduled = True
            loop.call_later(IDLE_SECONDS, self._idle_apply, loop)
            return
        # the bare lock (taking `self.lock` would apply everything at once): a slice, so a
        # request arriving meanwhile waits for one slice at most
        with self.lock.without_applying():
            if self._apply_slice():
                self._idle_scheduled = True
                loop.call_soon(self._idle_apply, loop)

    def _apply_slice(self) -> bool:
        """Apply the oldest queued operations for about IDLE_SLICE_SECONDS; True when more
        are waiting. Runs on the event loop with the store lock held, so nothing is queued
        meanwhile."""
        started = time.perf_counter()
        deadline = started + IDLE_SLICE_SECONDS
        with self._pending_lock:
            queue = self._pending
        done = 0
        with gc_paused(), self._freezing():
            for apply in queue:
                apply(self)
                done += 1
                if time.perf_counter() > deadline:
                    break
        with self._pending_lock:
            del self._pending[:done]
            more = bool(self._pending)
            if not more:
                self._pending_ops = 0
        self.apply_seconds += time.perf_counter() - started
        return more

    def _drain(self) -> None:
        with gc_paused(), self._freezing():
            self._drain_all()

    @contextlib.contextmanager
    def _freezing(self) -> Iterator[None]:
        """With :attr:`freeze_applied`: collect the young generations before applying (so no
        garbage is frozen but what survived to the oldest), freeze after."""
        if not self.freeze_applied:
            yield
            return
        gc.collect(1)
        try:
            yield
        finally:
            gc.freeze()

    def _drain_all(self) -> None:
        started = time.perf_counter()
        while True:
            with self._pending_lock:
                batch, self._pending, self._pending_ops = self._pending, [], 0
            if not batch:
                break
            for apply in batch:
                apply(self)
        self.apply_seconds += time.perf_counter() - started

    def reset(self) -> None:
        with self._pending_lock:
            self._pending, self._pending_ops = [], 0
        with self.lock:
            self.apply_seconds = 0.0
            self.people: dict[int, _P] = {}  # by _P.seq
            self.by_id: dict[str, int] = {}
            self.by_email: dict[str, int] = {}
            self.by_phone: dict[str, int] = {}
            self.events: list[Event] = []
            self.event_ids: set[str] = set()
            self.message_ids: set[str] = set()
            self.objects: dict[tuple[str, str], Object] = {}
            self.objects_by_cio: dict[str, tuple[str, str]] = {}
            self.rels: dict[tuple[str, str, str, str], dict[str, Any]] = {}
            self.merges: list[Merge] = []
            self.activity: list[Activity] = []
            self.blocked: dict[tuple[str, str], int] = {}
            self.segments: dict[int, str] = {}
            self.counters: dict[str, int] = {
                "records_ingested": 0,
                "duplicate_events_dropped": 0,
                "duplicate_messages_dropped": 0,
            }
            self._seq = 0
            self._idents = self._idents_enabled()
            self._indexes = {"id": self.by_id, "email": self.by_email, "phone": self.by_phone}

    # -- helpers -----------------------------------------------------------------------------

    def log(self, kind: str, message: str, source: str) -> None:
        self.activity.append(Activity(kind=kind, message=message, source=source, at=time.time()))

    def _key(self, kind: str, value: str) -> tuple[str, str]:
        return (kind, value.lower() if kind == "email" else value)

    def _index(self, kind: str) -> dict[str, int]:
        return self._indexes[kind]

    def resolve(self, ref: Ref) -> _P | None:
        kind, value = ref
        if kind == "cio_id":
            seq = cio_seq(value)
            return None if seq is None else self.people.get(seq)
        seq = self._index(kind).get(value.lower() if kind == "email" else value)
        return None if seq is None else self.people.get(seq)

    def is_blocked(self, *refs: Ref) -> bool:
        return bool(self.blocked) and any(self._key(*r) in self.blocked for r in refs)

    def _create(self, now: int) -> _P:
        self._seq += 1
        p = self.people[self._seq] = _P(self._seq, now, {})
        return p

    def _set_ident(self, p: _P, kind: str, value: str) -> None:
        index = self._index(kind)
        old = getattr(p, kind)
        if old is not None:
            index.pop(old.lower() if kind == "email" else old, None)
        setattr(p, kind, value)
        index[value.lower() if kind == "email" else value] = p.seq

    def _owner(self, p: _P, kind: str, value: str) -> bool:
        """True when ``value`` for ``kind`` is free or already belongs to ``p``."""
        seq = self._index(kind).get(value.lower() if kind == "email" else value)
        return seq is None or seq == p.seq

    def _idents_enabled(self) -> tuple[str, ...]:
        mode = self.config.workspace_mode
        return {"id_email": ("id", "email"), "id": ("id",), "email": ("email",)}[mode]

    # -- people --------------------------------------------------------------------------------

    def identify(
        self,
        ref: Ref,
        attrs: dict[str, Any],
        *,
        update_only: bool = False,
        timestamp: int | None = None,
        anonymous_id: str | None = None,
        source: str,
        create: bool = True,
    ) -> _P | None:
        """Create or update a person by the rules of reference section 1.2; returns the person."""
        now = int(time.time())
        body: list[Ref] = []
        for k in self._idents:
            v = attrs.get(k)
            if type(v) is str and v:
                body.append((k, v))
        with self.lock:
            if self.blocked and self.is_blocked(ref, *body):
                self.log("suppressed identifier", f"{ref[0]} `{ref[1]}` is suppressed", source)
                return None
            p = self.resolve(ref)
            if p is None and ref[0] == "cio_id":
                self.log("attribute update failure", f"no person with cio_id `{ref[1]}`", source)
                return None
            others: set[int] = set()
            for b in body:
                q = self.resolve(b)
                if q is not None:
                    others.add(q.seq)
            if p is None and len(others) > 1:
                self.log("attribute update failure", f"{body} belong to different people", source)
                return None
            if p is None and others:
                p = self.people[others.pop()]
            elif p is not None and others - {p.seq}:
                self.log(
                    "attribute update failure",
                    f"{ref[0]} `{ref[1]}` and body identifiers belong to different people",
                    source,
                )
                return None
            if p is None:
                if update_only or not create:
                    self.log(
                        "attribute update failure",
                        f"`_update` is set and no person matches {ref[0]} `{ref[1]}`",
                        source,
                    )
                    return None
                p = self._create(now)
            # identifiers: the path identifier (a person found through a body identifier gains
            # it, replacing an old value: "reusing one email updates a single person"), then body
            if ref[0] != "cio_id" and getattr(p, ref[0]) != ref[1]:
                current = getattr(p, ref[0])
                if not (ref[0] == "email" and current and current.lower() == ref[1].lower()):
                    self._set_ident(p, ref[0], ref[1])
            for kind, value in body:
                current = getattr(p, kind)
                if current == value or (
                    kind == "email" and current and current.lower() == value.lower()
                ):
                    if kind == "email" and current != value:
                        p.email = value
                    continue
                if (
                    current is None
                    or ref[0] == "cio_id"
                    or (
                        kind == "email" and ref[0] == "id" and self.config.allow_email_change_via_id
                    )
                ):
                    self._set_ident(p, kind, value)
                else:
                    self.log(
                        "attribute update failure",
                        f"cannot change {kind} of {p.cio_id} from `{current}` to `{value}` "
                        f"without referencing it by cio_id",
                        source,
                    )
            if "email" not in self._idents and type(attrs.get("email")) is str:
                p.email = attrs["email"]  # id-only workspace: an attribute, not an identifier
            elif (
                ref[0] != "email"
                and p.email is not None
                and "email" in attrs
                and attrs["email"] in (None, "")
                and self.config.null_removes_person_attributes
            ):
                # `email: ""` on a person found by `id` or `cio_id` removes the email as it
                # removes any attribute (unverified for the email): the address is free again
                self.by_email.pop(p.email.lower(), None)
                p.email = None
            self._apply_attrs(p, attrs, timestamp, source)
            if anonymous_id:
                self._link_anonymous(p, anonymous_id, now)
            p.updated_at = now
            self.counters["records_ingested"] += 1
            return p

    def identify_many(self, run: IdentifyRun, source: str) -> None:
        """Apply validated identifies in order: the same as ``identify((kind, value), attrs,
        source=source)`` for each, with the common case done inline.

        The inline case is a plain item (see :class:`IdentifyRun`) by ``id`` in an ``id_email``
        workspace with no suppressions, whose ``id`` and ``email`` are both unknown (a new
        person) or both belong to the same person. Anything else goes through :meth:`identify`.
        """
        now = int(time.time())
        with self.lock:
            inline = not self.blocked and self._idents == ("id", "email")
            people, by_id, by_email = self.people, self.by_id, self.by_email
            applied = 0
            seq = self._seq  # what _create does, inline; stored back before any other call
            for kind, value, attrs, plain in zip(
                run.kinds, run.values, run.attrs, run.plain, strict=True
            ):
                if not (inline and plain and kind == "id"):
                    self._seq = seq
                    self.identify((kind, value), attrs, source=source)
                    seq = self._seq
                    continue
                email = attrs.get("email")
                found = by_id.get(value)
                if email is None:
                    key = owner = None
                else:  # (islower() implies lower() would return an equal string)
                    key = email if email.islower() else email.lower()
                    owner = by_email.get(key)
                if found is None:
                    if owner is not None:  # found by email: gains the id, by the full rules
                        self._seq = seq
                        self.identify((kind, value), attrs, source=source)
                        seq = self._seq
                        continue
                    seq += 1
                    # the parsed dict itself becomes the attributes: nothing else holds it
                    people[seq] = _P(seq, now, attrs, value, email)
                    by_id[value] = seq
                    if key is not None:
                        by_email[key] = seq
                        del attrs["email"]  # an identifier, never an attribute
                    applied += 1
                    continue
                if email is not None and owner != found:  # a new or another's email
                    self._seq = seq
                    self.identify((kind, value), attrs, source=source)
                    seq = self._seq
                    continue
                p = people[found]
                if len(p.attrs) + len(attrs) > ATTRS_MAX_COUNT:  # the cap may bite: exact rules
                    self._seq = seq
                    self.identify((kind, value), attrs, source=source)
                    seq = self._seq
                    continue
                if email is not None and p.email != email:
                    p.email = email  # the same address in another case
                p.attrs.update(attrs)
                if email is not None:
                    del p.attrs["email"]  # an identifier, never an attribute
                p.updated_at = now
                applied += 1
            self._seq = seq
            self.counters["records_ingested"] += applied

    def _apply_attrs(
        self, p: _P, attrs: dict[str, Any], timestamp: int | None, source: str
    ) -> None:
        """Set ``attrs`` on ``p``; a new attribute that would take the person past 300 is not
        added (reference §9: 300 attributes per person, not only per call) and is logged as an
        attribute update failure, while the rest of the update applies."""
        ts = timestamp if timestamp is not None else attrs.get("_timestamp")
        ts = ts if type(ts) is int else None
        removes = self.config.null_removes_person_attributes
        target = p.attrs
        refused: list[str] = []
        for name, value in attrs.items():
            if name in SPECIAL_ATTRS or name[:29] == SUBSCRIPTION_PREFIX or ts is not None:
                if not self._apply_special(p, name, value, ts):
                    refused.append(name)
            elif removes and (value is None or value == ""):
                target.pop(name, None)
            elif len(target) < ATTRS_MAX_COUNT or name in target:
                target[name] = value
            else:
                refused.append(name)
        if refused:
            self.log(
                "attribute update failure",
                f"{p.cio_id} has {ATTRS_MAX_COUNT} attributes, the most a person can have; "
                f"{len(refused)} new attribute(s) not added: {', '.join(refused[:5])}"
                + (", …" if len(refused) > 5 else ""),
                source,
            )

    def _apply_special(self, p: _P, name: str, value: Any, ts: int | None) -> bool:
        """Apply one attribute with a rule of its own; False when the 300 cap refused it."""
        if name in _SKIP_ATTRS:
            return True
        if ts is not None:
            if p.attr_ts.get(name, -1) > ts:
                return True
        stored = "cio_subscription_preferences" if name.startswith(SUBSCRIPTION_PREFIX) else name
        removal = self.config.null_removes_person_attributes and (value is None or value == "")
        if (
            name != "unsubscribed"
            and not removal
            and stored not in p.attrs
            and len(p.attrs) >= ATTRS_MAX_COUNT
        ):
            return False
        if ts is not None:
            p.own_attr_ts()[name] = ts
        if name == "unsubscribed":
            p.unsubscribed = truthy_unsubscribed(value)
            return True
        if name.startswith(SUBSCRIPTION_PREFIX):
            node = p.attrs.setdefault("cio_subscription_preferences", {})
            parts = name[len(SUBSCRIPTION_PREFIX) :].split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
            return True
        if removal:
            p.attrs.pop(name, None)
            return True
        p.attrs[name] = value
        if name == "created_at" and type(value) is int:
            p.created_at = value
        return True

    def _link_anonymous(self, p: _P, anonymous_id: str, now: int) -> None:
        if anonymous_id not in p.anonymous_ids:
            p.anonymous_ids += (anonymous_id,)
        horizon = now - self.config.anonymous_merge_days * 86400
        for i, e in enumerate(self.events):
            if e.person is None and e.anonymous_id == anonymous_id and e.timestamp >= horizon:
                self.events[i] = _replace_person(e, p.cio_id)
        for key in [k for k in self.rels if k[0] == "a" and k[1] == anonymous_id]:
            self.rels.setdefault(("p", p.cio_id, key[2], key[3]), self.rels.pop(key))

    def person_or_create(self, ref: Ref, source: str) -> _P | None:
        """The person for an event/device call; an unknown id/email/phone creates one."""
        with self.lock:
            if self.is_blocked(ref):
                self.log("suppressed identifier", f"{ref[0]} `{ref[1]}` is suppressed", source)
                return None
            p = self.resolve(ref)
            if p is not None:
                return p
            if ref[0] == "cio_id":
                self.log("attribute update failure", f"no person with cio_id `{ref[1]}`", source)
                return None
            p = self._create(int(time.time()))
            self._set_ident(p, ref[0], ref[1])
            return p

    def _drop(self, p: _P) -> None:
        for kind in ("id", "email", "phone"):
            value = getattr(p, kind)
            if value is not None:
                self._index(kind).pop(value.lower() if kind == "email" else value, None)
        del self.people[p.seq]
        cio = p.cio_id
        self.events = [e for e in self.events if e.person != cio]
        for key in [k for k in self.rels if k[0] == "p" and k[1] == cio]:
            del self.rels[key]

    def delete_person(self, ref: Ref, source: str) -> None:
        with self.lock:
            p = self.resolve(ref)
            if p is None:
                self.log("delete of unknown person", f"no person with {ref[0]} `{ref[1]}`", source)
                return
            self._drop(p)
            self.counters["records_ingested"] += 1

    def suppress(self, ref: Ref, source: str) -> None:
        with self.lock:
            p = self.resolve(ref)
            keys = {self._key(*ref)} if ref[0] != "cio_id" else set()
            if p is not None:
                keys |= {
                    self._key(k, getattr(p, k)) for k in ("id", "email", "phone") if getattr(p, k)
                }
                self._drop(p)
            self._seq += 1
            for key in keys:
                self.blocked[key] = self._seq
            self.counters["records_ingested"] += 1

    def unsuppress(self, ref: Ref, source: str) -> None:
        with self.lock:
            group = self.blocked.get(self._key(*ref))
            if group is None:
                self.log("unsuppress of unsuppressed identifier", f"{ref[0]} `{ref[1]}`", source)
                return
            self.blocked = {k: g for k, g in self.blocked.items() if g != group}
            self.counters["records_ingested"] += 1

    def add_event(
        self,
        ref: Ref | None,
        *,
        anonymous_id: str | None,
        name: str,
        type: str,
        id: str | None,
        timestamp: int | None,
        data: dict[str, Any],
        source: str,
    ) -> bool:
        """Store an event; False when it was a duplicate ``id`` or had no valid owner."""
        now = int(time.time())
        with self.lock:
            if id is not None and id in self.event_ids:
                self.counters["duplicate_events_dropped"] += 1
                return False
            owner: str | None = None
            if ref is not None:
                p = self.person_or_create(ref, source)
                if p is None:
                    return False
                owner = p.cio_id
            if id is not None:
                self.event_ids.add(id)
            self.events.append(
                Event(owner, anonymous_id, name, type, id, timestamp or now, data, now, source)
            )
            self.counters["records_ingested"] += 1
            return True

    def add_device(self, ref: Ref, device: Device, source: str) -> None:
        with self.lock:
            p = self.person_or_create(ref, source)
            if p is not None:
                p.own_devices()[device.id] = device
                self.counters["records_ingested"] += 1

    def delete_device(self, ref: Ref, token: str, source: str) -> None:
        with self.lock:
            p = self.resolve(ref)
            if p is None or token not in p.devices:
                self.log("delete of unknown device", f"device `{token}` not found", source)
            else:
                del p.own_devices()[token]
                self.counters["records_ingested"] += 1

    def merge(self, primary: Ref, secondary: Ref, source: str) -> None:
        """Fold ``secondary`` into ``primary`` (reference section 1.5); secondary is deleted."""
        now = int(time.time())
        with self.lock:
            p, s = self.resolve(primary), self.resolve(secondary)
            if p is None:
                self.log("merge primary not found", f"{primary[0]} `{primary[1]}`", source)
                return
            if s is None:
                self.log("merge secondary not found", f"{secondary[0]} `{secondary[1]}`", source)
                return
            if p is s:
                self.log("merge of a person with itself", f"{primary[0]} `{primary[1]}`", source)
                return
            for name, value in s.attrs.items():
                if p.attrs.get(name) in (None, ""):
                    p.attrs[name] = value
            horizon = now - self.config.merge_event_days * 86400
            for i, e in enumerate(self.events):
                if e.person == s.cio_id and e.timestamp >= horizon:
                    self.events[i] = _replace_person(e, p.cio_id)
            for key in [k for k in self.rels if k[0] == "p" and k[1] == s.cio_id]:
                self.rels.setdefault(("p", p.cio_id, key[2], key[3]), self.rels[key])
            if s.devices:
                devices = p.own_devices()
                for token, device in s.devices.items():
                    devices.setdefault(token, device)
            p.segments |= s.segments
            p.anonymous_ids += tuple(a for a in s.anonymous_ids if a not in p.anonymous_ids)
            s_id, s_email = s.id, s.email
            self._drop(s)
            p.updated_at = now
            self.merges.append(Merge(p.cio_id, s.cio_id, s_id, s_email, now, source))
            self.counters["records_ingested"] += 1

    # -- objects and relationships -------------------------------------------------------------

    def object_key(self, ref: ObjRef, source: str, *, create: bool) -> tuple[str, str] | None:
        """Resolve an object reference; log and return None when it cannot be applied."""
        if ref[0] == "cio_object_id":
            key = self.objects_by_cio.get(ref[1])
            if key is None:
                self.log("unknown object", f"no object with cio_object_id `{ref[1]}`", source)
            return key
        if ref[0] not in self.config.object_types:
            self.log("unknown object type", f"object_type_id `{ref[0]}` is not registered", source)
            return None
        if ref not in self.objects and not create:
            self.log("unknown object", f"object `{ref[0]}/{ref[1]}` does not exist", source)
            return None
        return ref

    def identify_object(
        self, ref: ObjRef, attrs: dict[str, Any], source: str
    ) -> tuple[str, str] | None:
        now = int(time.time())
        with self.lock:
            key = self.object_key(ref, source, create=True)
            if key is None:
                return None
            old = self.objects.get(key)
            if old is None:
                self._seq += 1
                old = Object(key[0], key[1], f"o{self._seq:07x}", {}, now, now)
                self.objects_by_cio[old.cio_object_id] = key
            merged = self._capped_merge(
                old.attributes, attrs, f"object `{key[0]}/{key[1]}`", source
            )
            self.objects[key] = Object(
                key[0], key[1], old.cio_object_id, merged, old.created_at, now
            )
            self.counters["records_ingested"] += 1
            return key

    def delete_object(self, ref: ObjRef, source: str) -> None:
        with self.lock:
            key = self.object_key(ref, source, create=False)
            if key is None:
                return
            obj = self.objects.pop(key)
            self.objects_by_cio.pop(obj.cio_object_id, None)
            for rk in [k for k in self.rels if k[2:] == key]:
                del self.rels[rk]
            self.counters["records_ingested"] += 1

    def relate(
        self,
        owner: tuple[str, str],
        obj: tuple[str, str],
        attrs: dict[str, Any] | None,
        *,
        add: bool,
        source: str,
    ) -> None:
        """Add (merging attributes) or delete a relationship; owner ("p", cio) or ("a", anon)."""
        with self.lock:
            key = (owner[0], owner[1], obj[0], obj[1])
            if add:
                what = f"relationship of `{owner[1]}` to object `{obj[0]}/{obj[1]}`"
                self.rels[key] = self._capped_merge(
                    self.rels.get(key, {}), attrs or {}, what, source
                )
            else:
                self.rels.pop(key, None)
            self.counters["records_ingested"] += 1

    def _capped_merge(
        self, old: dict[str, Any], new: dict[str, Any], what: str, source: str
    ) -> dict[str, Any]:
        """:func:`_merge_attrs` within the limits of an object or relationship as a whole
        (reference §3: at most 300 attributes and 100 KB of them): an attribute that would take
        it past either is not set and is logged as an attribute update failure."""
        merged = _merge_attrs(old, new)
        if len(merged) <= ATTRS_MAX_COUNT and _attrs_bytes(merged) <= OBJECT_ATTRS_MAX_TOTAL:
            return merged
        out = dict(old)
        size = _attrs_bytes(out)
        refused = []
        for name, value in new.items():
            before = _attr_bytes(name, out[name]) if name in out else 0
            if value is None or value == "":
                out.pop(name, None)
                size -= before
                continue
            grown = size - before + _attr_bytes(name, value)
            if (name not in out and len(out) >= ATTRS_MAX_COUNT) or (
                grown > OBJECT_ATTRS_MAX_TOTAL and grown > size
            ):
                refused.append(name)
                continue
            out[name] = value
            size = grown
        self.log(
            "attribute update failure",
            f"{what} would pass {ATTRS_MAX_COUNT} attributes or {OBJECT_ATTRS_MAX_TOTAL:,} bytes "
            f"of them; {len(refused)} attribute(s) not set: {', '.join(refused[:5])}"
            + (", …" if len(refused) > 5 else ""),
            source,
        )
        return out

    # -- manual segments -----------------------------------------------------------------------

    def segment_members(self, segment_id: int) -> list[str]:
        with self.lock:
            return [p.cio_id for p in self.people.values() if segment_id in p.segments]

    def segment_update(self, segment_id: int, refs: Iterable[Ref], *, add: bool) -> None:
        with self.lock:
            for ref in refs:
                p = self.resolve(ref)
                if p is not None:
                    p.segments = p.segments | {segment_id} if add else p.segments - {segment_id}

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot_people(self) -> list[Person]:
        with self.lock:
            return [p.freeze() for p in self.people.values()]

    def snapshot_relationships(self) -> list[Relationship]:
        with self.lock:
            return [
                Relationship(
                    person=k[1] if k[0] == "p" else None,
                    anonymous_id=k[1] if k[0] == "a" else None,
                    object_type_id=k[2],
                    object_id=k[3],
                    attributes=dict(v),
                )
                for k, v in self.rels.items()
            ]


def _replace_person(e: Event, cio_id: str) -> Event:
    return Event(
        cio_id, e.anonymous_id, e.name, e.type, e.id, e.timestamp, e.data, e.received_at, e.source
    )


def _attr_bytes(name: str, value: Any) -> int:
    """An attribute's share of the 100 KB total: its name's and value's bytes."""
    return len(name.encode()) + nbytes(value)


def _attrs_bytes(attrs: dict[str, Any]) -> int:
    return sum(_attr_bytes(name, value) for name, value in attrs.items())


def _merge_attrs(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Objects and relationships: ``null`` or ``""`` removes an attribute."""
    out = dict(old)
    for name, value in new.items():
        if value is None or value == "":
            out.pop(name, None)
        else:
            out[name] = value
    return out
