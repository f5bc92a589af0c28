"""Track API v2: ``POST /api/v2/entity`` and ``POST /api/v2/batch`` (reference section 2).

Each operation is validated completely before anything is applied, so an invalid batch item gets a
207 entry ``{"batch_index", "reason", "field", "message"}`` and changes nothing while the
valid items are applied. Whole-body problems (not JSON, no ``batch`` list, over the byte
limit) answer 400 ``{"errors": [...]}``. Like Customer.io, the emulator answers before it applies:
the validated operations are queued (:meth:`Store.defer`) and applied, in order, before anyone
next reads or writes the store, so a reader always sees every accepted batch whole.

Most batch items are plain ``person identify`` operations; :func:`fast_identify` accepts exactly
those with a few type and length checks and hands everything else (any doubt, any error) to the
exact path, :func:`plan`. Both give the same answer and the same store state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from lockgate.emulator import limits as L
from lockgate.emulator.config import EmulatorConfig
from lockgate.emulator.limits import ItemError
from lockgate.emulator.models import Device
from lockgate.emulator.runtime import Runtime, json_response, ok
from lockgate.emulator.store import SPECIAL_ATTRS, SUBSCRIPTION_PREFIX, IdentifyRun, Store

SOURCE = "track_v2"
PERSON_ACTIONS = frozenset(
    {
        "identify", "delete", "event", "screen", "page", "add_relationships",
        "delete_relationships", "add_device", "delete_device", "merge", "suppress", "unsuppress",
    }
)  # fmt: skip
OBJECT_ACTIONS = frozenset(
    {"identify", "identify_anonymous", "delete", "add_relationships", "delete_relationships"}
)
DELIVERY_METRICS = frozenset({"opened", "converted", "delivered"})
EVENT_ACTIONS = frozenset({"event", "screen", "page"})
Apply = Callable[[Store], None]


_BASE_KINDS = frozenset({"id", "email", "cio_id"})
_ALLOWED = {
    (False, False): _BASE_KINDS,
    (True, False): _BASE_KINDS | {"phone"},
    (False, True): _BASE_KINDS | {"anonymous_id"},
    (True, True): _BASE_KINDS | {"phone", "anonymous_id"},
}


def emails_enabled(cfg: EmulatorConfig) -> bool:
    """Whether ``email`` is a person identifier of the workspace (not in an id-only one)."""
    return cfg.workspace_mode != "id"


def person_ref(
    idents: Any, field: str, *, phone: bool, anonymous: bool = False, email: bool = True
) -> tuple[str, str]:
    """Exactly one person identifier: id | email | phone | cio_id (unprefixed).

    ``email``/``phone`` false: the workspace does not have that identifier enabled (an
    id-only workspace for ``email``); the official spec allows them "only if they're enabled
    as identifiers in your workspace settings" (``person_common``; ``person_merge`` likewise
    for ``email``).
    """
    if type(idents) is dict and len(idents) == 1:
        ((kind, value),) = idents.items()
        # fast path: the common, valid case
        if kind == "id" and type(value) is str and value and len(value) <= 37:
            return kind, value
        if kind == "email" and email and type(value) is str and value:
            return kind, value
    if not isinstance(idents, dict) or not idents:
        raise ItemError("required", field, f"{field} must be an object with exactly one identifier")
    if len(idents) != 1:
        raise ItemError(
            "invalid", field, f"{field} must hold exactly one identifier, got {sorted(idents)}"
        )
    ((kind, value),) = idents.items()
    allowed = _ALLOWED[(phone, anonymous)]
    if kind == "email" and not email:
        raise ItemError(
            "invalid",
            f"{field}.email",
            "`email` is not an identifier in this workspace (not enabled in its settings); "
            "use `id` or `cio_id`",
        )
    if kind not in allowed:
        raise ItemError(
            "invalid", f"{field}.{kind}", f"unknown identifier `{kind}`; use {sorted(allowed)}"
        )
    value = L.check_identifier_value(kind, value, f"{field}.{kind}")
    if kind == "cio_id" and value.startswith("cio_"):
        raise ItemError("invalid", f"{field}.cio_id", "cio_id must not carry the `cio_` prefix")
    return kind, value


def object_ref(idents: Any, field: str) -> tuple[str, str]:
    """``{object_type_id: "1", object_id}`` → ("1", id); ``{cio_object_id}`` → (…)."""
    if not isinstance(idents, dict):
        raise ItemError("required", field, f"{field} must be an object")
    if "cio_object_id" in idents and len(idents) == 1:
        value = idents["cio_object_id"]
        if not isinstance(value, str) or not value:
            raise ItemError("invalid", f"{field}.cio_object_id", "cio_object_id must be a string")
        return "cio_object_id", value
    type_id, object_id = idents.get("object_type_id"), idents.get("object_id")
    if not isinstance(type_id, str) or not type_id.isdigit():
        raise ItemError(
            "invalid",
            f"{field}.object_type_id",
            f'object_type_id must be a string holding an integer, like "1"; got `{type_id!r}`',
        )
    if not isinstance(object_id, str) or object_id == "":
        raise ItemError("required", f"{field}.object_id", "object_id must be a non-empty string")
    if len(object_id.encode()) > L.OBJECT_ID_MAX_BYTES:
        raise ItemError("limit", f"{field}.object_id", "object_id cannot be longer than 150 bytes")
    return type_id, object_id


def _rel_attrs(item: dict[str, Any], field: str) -> dict[str, Any]:
    return L.check_attributes(
        item.get("relationship_attributes"),
        f"{field}.relationship_attributes",
        total_max=L.OBJECT_ATTRS_MAX_TOTAL,
    )


def person_relationships(rels: Any, field: str) -> list[tuple[tuple[str, str], dict[str, Any]]]:
    """v2 person-side ``cio_relationships``: a list of objects with relationship attributes."""
    if not isinstance(rels, list) or not rels:
        raise ItemError("required", field, f"{field} must be a non-empty array")
    out = []
    for i, item in enumerate(rels):
        f = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise ItemError("invalid", f, "relationship must be an object")
        out.append((object_ref(item.get("identifiers"), f"{f}.identifiers"), _rel_attrs(item, f)))
    return out


def _people_relationships(
    rels: Any, field: str, *, phone: bool, anonymous: bool, email: bool = True
) -> list[tuple[tuple[str, str], dict[str, Any]]]:
    if not isinstance(rels, list):
        raise ItemError("invalid", field, f"{field} must be an array")
    out = []
    for i, item in enumerate(rels):
        f = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise ItemError("invalid", f, "relationship must be an object")
        ref = person_ref(
            item.get("identifiers"),
            f"{f}.identifiers",
            phone=phone,
            anonymous=anonymous,
            email=email,
        )
        out.append((ref, _rel_attrs(item, f)))
    return out


def relate_person(
    store: Store,
    ref: tuple[str, str],
    items: list[tuple[tuple[str, str], dict[str, Any]]],
    *,
    add: bool,
    source: str,
) -> None:
    p = store.person_or_create(ref, source) if add else store.resolve(ref)
    if p is None:
        if not add:
            store.log("unknown person", f"{ref[0]} `{ref[1]}` not found", source)
        return
    for oref, attrs in items:
        key = (
            store.identify_object(oref, {}, source)
            if add
            else store.object_key(oref, source, create=False)
        )
        if key is not None:
            store.relate(("p", p.cio_id), key, attrs, add=add, source=source)


def _person(op: dict[str, Any], rt: Runtime) -> Apply:
    cfg = rt.config
    action = op.get("action")
    if action not in PERSON_ACTIONS:
        raise ItemError("invalid", "action", f"unknown person action `{action}`")
    if action == "merge":
        email = emails_enabled(cfg)
        primary = person_ref(op.get("primary"), "primary", phone=False, email=email)
        secondary = person_ref(op.get("secondary"), "secondary", phone=False, email=email)
        return lambda s: s.merge(primary, secondary, SOURCE)
    ref = person_ref(
        op.get("identifiers"),
        "identifiers",
        phone=cfg.phone_identifiers,
        anonymous=action in EVENT_ACTIONS,
        email=emails_enabled(cfg),
    )
    if ref[1] in cfg.faults.reject_people:
        raise ItemError(
            "invalid",
            f"identifiers.{ref[0]}",
            f"emulator fault: {ref[0]} `{ref[1]}` is refused (FaultConfig.reject_people)",
        )
    if action == "identify":
        attrs = L.check_attributes(op.get("attributes"), "attributes")
        ts = L.check_timestamp(op.get("timestamp"))
        L.check_timestamp(attrs.get("_timestamp"), "attributes._timestamp")
        # the reserved attribute is unix seconds on every surface (v1 checks it the same way)
        L.check_timestamp(attrs.get("created_at"), "attributes.created_at")
        rels = op.get("cio_relationships")
        items = person_relationships(rels, "cio_relationships") if rels else []
        update_only = attrs.get("_update") is True
        # the spec's `anonymous_id` schema: "if set as an attribute on a person, any events
        # bearing the same anonymous_id are associated with that person" (as in v1 identify)
        anon = attrs.get("anonymous_id") if isinstance(attrs.get("anonymous_id"), str) else None

        def identify(s: Store) -> None:
            p = s.identify(
                ref,
                attrs,
                update_only=update_only,
                timestamp=ts,
                anonymous_id=anon,
                source=SOURCE,
            )
            if p is not None and items:
                relate_person(s, ("cio_id", p.cio_id), items, add=True, source=SOURCE)

        return identify
    if action in EVENT_ACTIONS:
        name = L.check_event_name(op.get("name"))
        event_id = L.check_event_id(op.get("id"), cfg.require_ulid_event_ids)
        ts = L.check_timestamp(op.get("timestamp"))
        data = L.check_event_data(op.get("attributes"), "attributes")
        anon = ref[1] if ref[0] == "anonymous_id" else None
        pref = None if anon else ref
        return lambda s: (
            s.add_event(
                pref, anonymous_id=anon, name=name, type=action, id=event_id, timestamp=ts,
                data=data, source=SOURCE,
            ),
            None,
        )[1]  # fmt: skip
    if action in ("add_relationships", "delete_relationships"):
        items = person_relationships(op.get("cio_relationships"), "cio_relationships")
        add = action == "add_relationships"
        return lambda s: relate_person(s, ref, items, add=add, source=SOURCE)
    if action == "add_device":
        dev = op.get("device")
        if not isinstance(dev, dict) or not isinstance(dev.get("token"), str) or not dev["token"]:
            raise ItemError("required", "device.token", "device.token is required")
        if dev.get("platform") not in ("ios", "android"):
            raise ItemError("invalid", "device.platform", "device.platform must be ios or android")
        last_used = L.check_timestamp(dev.get("last_used"), "device.last_used")
        dattrs = L.check_attributes(dev.get("attributes"), "device.attributes")
        device = Device(dev["token"], dev["platform"], last_used, dict(dattrs))
        return lambda s: s.add_device(ref, device, SOURCE)
    if action == "delete_device":
        dev = op.get("device")
        if not isinstance(dev, dict) or not isinstance(dev.get("token"), str) or not dev["token"]:
            raise ItemError("required", "device.token", "device.token is required")
        token = dev["token"]
        return lambda s: s.delete_device(ref, token, SOURCE)
    if action == "delete":
        return lambda s: s.delete_person(ref, SOURCE)
    if action == "suppress":
        return lambda s: s.suppress(ref, SOURCE)
    return lambda s: s.unsuppress(ref, SOURCE)


def _object(op: dict[str, Any], rt: Runtime) -> Apply:
    cfg = rt.config
    phone = cfg.phone_identifiers
    action = op.get("action")
    if action not in OBJECT_ACTIONS:
        raise ItemError("invalid", "action", f"unknown object action `{action}`")
    oref = object_ref(op.get("identifiers"), "identifiers")
    if action == "delete":
        return lambda s: s.delete_object(oref, SOURCE)
    anonymous = action == "identify_anonymous"
    rels = op.get("cio_relationships")
    if action in ("add_relationships", "delete_relationships") and not rels:
        raise ItemError("required", "cio_relationships", "cio_relationships must be non-empty")
    people = (
        _people_relationships(
            rels, "cio_relationships", phone=phone, anonymous=anonymous, email=emails_enabled(cfg)
        )
        if rels
        else []
    )
    if action in ("identify", "identify_anonymous"):
        attrs = L.check_attributes(
            op.get("attributes"), "attributes", total_max=L.OBJECT_ATTRS_MAX_TOTAL
        )
        if "relationship" in attrs:
            raise ItemError(
                "invalid", "attributes.relationship", "`relationship` is a reserved name"
            )

        def identify(s: Store) -> None:
            if oref[0] == "cio_object_id" and s.object_key(oref, SOURCE, create=False) is None:
                return
            key = s.identify_object(oref, attrs, SOURCE)
            if key is not None:
                _relate_people(s, key, people, add=True)

        return identify
    add = action == "add_relationships"

    def relate(s: Store) -> None:
        key = s.object_key(oref, SOURCE, create=False)
        if key is not None:
            _relate_people(s, key, people, add=add)

    return relate


def _relate_people(
    s: Store, key: tuple[str, str], people: list[tuple[tuple[str, str], dict[str, Any]]], add: bool
) -> None:
    for pref, attrs in people:
        if pref[0] == "anonymous_id":
            s.relate(("a", pref[1]), key, attrs, add=add, source=SOURCE)
            continue
        p = s.person_or_create(pref, SOURCE) if add else s.resolve(pref)
        if p is not None:
            s.relate(("p", p.cio_id), key, attrs, add=add, source=SOURCE)


def _delivery(op: dict[str, Any], rt: Runtime) -> Apply:
    if op.get("action") != "event":
        raise ItemError("invalid", "action", "delivery action must be `event`")
    idents = op.get("identifiers")
    if not isinstance(idents, dict) or not isinstance(idents.get("id"), str) or not idents["id"]:
        raise ItemError(
            "required", "identifiers.id", "identifiers.id (the delivery_id) is required"
        )
    name = op.get("name")
    if name not in DELIVERY_METRICS:
        raise ItemError(
            "invalid", "name", f"delivery metric must be one of {sorted(DELIVERY_METRICS)}"
        )
    delivery_id = idents["id"]
    return lambda s: s.log("delivery metric", f"{name} for delivery `{delivery_id}`", SOURCE)


def plan(op: Any, rt: Runtime) -> Apply:
    """Validate one operation completely; return the function that applies it."""
    if not isinstance(op, dict):
        raise ItemError("invalid", "", "operation must be an object")
    kind = op.get("type")
    if kind == "person":
        return _person(op, rt)
    if kind == "object":
        return _object(op, rt)
    if kind == "delivery":
        return _delivery(op, rt)
    raise ItemError("invalid", "type", f"type must be person, object or delivery; got `{kind}`")


#: Attribute names the exact path reads while validating; an op carrying one goes to :func:`plan`.
_PLAN_NAMES = frozenset({"_timestamp", "_update", "anonymous_id"})
#: The most JSON bytes one attribute can take in an op :func:`fast_identify` accepts besides the
#: characters of a string value (a name of <= 37 characters, each at most 6 bytes, a number of
#: <= 24 and the punctuation), and the most the rest of the op can take besides the identifier's
#: value: with the string values' characters at 6 bytes each, a bound on ``len(orjson.dumps(op))``
#: that spares serialising the op again for all but huge ones.
_ATTR_JSON = 6 * 37 + 30
_OP_FIXED_JSON = 128
#: SPECIAL_ATTRS but ``email``, which a plain op may carry (as a string).
_RULED_NAMES = SPECIAL_ATTRS - {"email"}


_REJECT, _PLAIN, _RULED = 0, 1, 2
#: What the attribute names of an op say, by the tuple of them: a sync sends the same few
#: tuples over and over (orjson even shares the key strings), so most ops cost one look-up here.
_NAMES: dict[tuple[str, ...], int] = {}
_NAMES_MAX = 4096


def _names_verdict(names: tuple[str, ...]) -> int:
    """_REJECT (a name over 37 characters or one :func:`plan` must read), _RULED (a name with a
    rule of its own, but ``email``, or a subscription preference: not plain) or _PLAIN."""
    if max(map(len, names), default=0) > 37 or not _PLAN_NAMES.isdisjoint(names):
        verdict = _REJECT
    elif not _RULED_NAMES.isdisjoint(names):
        verdict = _RULED
    # the prefix anywhere in a name, not only at the start (a match cannot span the "\n")
    elif SUBSCRIPTION_PREFIX in "\n".join(names):
        verdict = _RULED
    else:
        verdict = _PLAIN
    if len(_NAMES) >= _NAMES_MAX:  # bounded: some clients send ever-changing names
        _NAMES.clear()
    _NAMES[names] = verdict
    return verdict


def fast_identify(op: Any, run: IdentifyRun) -> bool:
    """Add ``op`` to ``run`` when it is a well-formed, common ``person identify``.

    Accepts only ops the exact path (:func:`plan`) surely accepts, with the same meaning: keys
    ``type``, ``action``, ``identifiers`` (one ``id`` of at most 37 characters, or one
    ``email``) and ``attributes``, whose names are at most 37 characters and values numbers,
    booleans, null, or strings of at most 250 characters (or ASCII of at most 1000), so no
    byte limit can be hit. False means "ask :func:`plan`", which finds the exact error, if there
    is one. ``plain`` tells the store that no attribute needs a special rule (see
    :class:`IdentifyRun`).
    """
    return fast_identifies([op], 0, run) == 1


def fast_identifies(ops: list[Any], start: int, run: IdentifyRun, email: bool = True) -> int:
    """:func:`fast_identify` for ``ops[start:]`` in one call (no call per op): adds ops to
    ``run`` up to the first it does not accept, and returns that op's index (``len(ops)``
    when it accepted them all). ``email`` false (an id-only workspace): an op by ``email``
    goes to :func:`plan`, which refuses it."""
    kinds, values, attrs_of, plains = run.kinds, run.values, run.attrs, run.plain
    max_count, value_max, op_max = L.ATTRS_MAX_COUNT, L.ATTR_VALUE_MAX_BYTES, L.OP_MAX_BYTES
    ts_max = L.MAX_UNIX_SECONDS
    verdicts = _NAMES.get
    last_names: tuple[str, ...] | None = None  # most ops repeat the previous op's names
    last_verdict = _REJECT
    for i in range(start, len(ops)):
        op = ops[i]
        if type(op) is not dict or len(op) != 4:
            return i
        try:  # subscripts, not .get(): this runs for every item of every batch
            if op["action"] != "identify" or op["type"] != "person":
                return i
            attrs = op["attributes"]
            idents = op["identifiers"]
        except KeyError:
            return i
        if type(attrs) is not dict or type(idents) is not dict or len(idents) != 1:
            return i
        ((kind, value),) = idents.items()
        if type(value) is not str or not value:
            return i
        if kind == "id":
            if len(value) > 37:
                return i
        elif kind != "email" or not email:
            return i
        if len(attrs) > max_count:
            return i
        names = tuple(attrs)
        if names == last_names:  # the same strings (orjson shares keys): no hashing
            verdict = last_verdict
        else:
            known = verdicts(names)
            verdict = _names_verdict(names) if known is None else known
            last_names, last_verdict = names, verdict
        if verdict is _REJECT:
            return i
        plain = verdict is _PLAIN
        if not plain and "created_at" in attrs:  # unix seconds, else plan() says why not
            created = attrs["created_at"]
            if created is not None and (type(created) is not int or not 0 <= created < ts_max):
                return i
        chars = 0  # characters of string values
        for v in attrs.values():
            tv = type(v)
            if tv is str:
                n = len(v)
                if n > 250:
                    if n > value_max or not v.isascii():
                        return i
                elif not n:
                    plain = False
                chars += n
            elif v is None:
                plain = False
            elif tv is not int and tv is not float and tv is not bool:
                return i
        if plain and type(attrs.get("email", "")) is not str:
            plain = False
        bound = _OP_FIXED_JSON + len(attrs) * _ATTR_JSON + 6 * (chars + len(value))
        if bound > op_max and len(L.dumps(op)) > op_max:
            return i
        kinds.append(kind)
        values.append(value)
        attrs_of.append(attrs)
        plains.append(plain)
    return len(ops)


def _fast_ids_only(ops: list[Any], start: int, run: IdentifyRun) -> int:
    """:func:`fast_identifies` of an id-only workspace, where ``email`` is no identifier."""
    return fast_identifies(ops, start, run, email=False)


def _no_fast_path(ops: list[Any], start: int, run: IdentifyRun) -> int:
    """:func:`fast_identifies` accepting nothing: every op goes to :func:`plan`."""
    return start


def _identify_run(run: IdentifyRun) -> Apply:
    return lambda s: s.identify_many(run, SOURCE)


def _whole(status: int, reason: str, field: str, message: str) -> Response:
    return json_response(
        status, {"errors": [{"reason": reason, "field": field, "message": message}]}
    )


def entity(rt: Runtime, request: Request, body: bytes) -> Response:
    started = time.perf_counter()
    if len(body) >= L.ENTITY_MAX_BYTES:
        return _whole(400, "limit", "", f"request body is {len(body)} B; /entity takes < 32 KB")
    try:
        op = L.loads(body)
        apply = plan(op, rt)
    except orjson.JSONDecodeError as exc:
        return _whole(400, "invalid", "", f"body is not valid JSON: {exc}")
    except ItemError as exc:
        return json_response(400, {"errors": [exc.to_json()]})
    rt.store.defer([apply], 1)
    rt.add_v2_ingest(1, time.perf_counter() - started)
    return ok()


def batch(rt: Runtime, request: Request, body: bytes) -> Response:
    started = time.perf_counter()
    if len(body) >= L.BATCH_MAX_BYTES:
        return _whole(
            400, "limit", "", f"request body is {len(body):,} B; /batch takes < 500,000 B (500 KB)"
        )
    with L.gc_paused():
        return _batch(rt, body, started)


def _batch(rt: Runtime, body: bytes, started: float) -> Response:
    long = L.has_long_number(body)
    try:
        doc = L.loads(body, long)
    except orjson.JSONDecodeError as exc:
        return _whole(400, "invalid", "", f"body is not valid JSON: {exc}")
    ops = doc.get("batch") if isinstance(doc, dict) else None
    if not isinstance(ops, list) or not ops:
        return _whole(400, "required", "batch", 'body must be {"batch": [operation, ...]}')
    check_size = len(body) > L.OP_MAX_BYTES
    errors: list[dict[str, Any]] = []
    plans: list[Apply] = []
    run = IdentifyRun()  # consecutive fast identifies, applied as one unit
    accepted = 0
    # refused people and integers past 64 bits (which the fast path takes for 8 bytes) are
    # found by the exact path only: the fast one stays as it is
    fast = _no_fast_path if rt.config.faults.reject_people or long else fast_identifies
    if fast is fast_identifies and not emails_enabled(rt.config):
        fast = _fast_ids_only
    i = fast(ops, 0, run)
    while i < len(ops):
        op = ops[i]
        if run:
            plans.append(_identify_run(run))
            accepted += len(run)
            run = IdentifyRun()
        try:
            if check_size and len(L.dumps(op)) > L.OP_MAX_BYTES:
                raise ItemError("limit", "", "operation is over 32 KB")
            plans.append(plan(op, rt))
            accepted += 1
        except ItemError as exc:
            errors.append({"batch_index": i, **exc.to_json()})
        i = fast(ops, i + 1, run)
    if run:
        plans.append(_identify_run(run))
        accepted += len(run)
    rt.store.defer(plans, accepted)  # applied before anyone next takes the store lock
    rt.add_v2_ingest(accepted, time.perf_counter() - started)
    if errors:
        return json_response(207, {"errors": errors})
    return ok()
