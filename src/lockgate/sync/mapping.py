"""Map: turn model rows into Customer.io Track v2 operations, as SQL run inside DuckDB.

The mapping of a sync compiles to one ``SELECT`` over the staged model. Each row yields:

- ``k``: the record key (primary key for people, the stable event key for events);
- ``op``: the operation's JSON text exactly as it will be sent (for events, without the
  dedupe ``id``, which :func:`lockgate.sync.deliver.event_ulids` derives from ``k``, ``ts``
  and ``id_seed``);
- ``ident``: all the row's identifiers as a JSON object (for history and removals);
- ``reject``: why the row cannot be sent (null identifier, bad type, oversized value...),
  naming the column and quoting the value, or null when the row is fine.

Doing this in SQL keeps Python out of the per-row path: DuckDB builds a million
payloads in about a second on two cores. Null handling follows the field's policy:
``skip`` omits the key (a null never overwrites), ``clear`` sends ``""``, ``default``
sends the default.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from lockgate.destinations.customerio.settings import MAX_OP_BYTES
from lockgate.errors import QUOTED_CHARS, QUOTED_HEAD, ConfigError
from lockgate.project.identity import (
    EMAIL_FORBIDDEN,
    EMAIL_MAX_CHARS,
    EMAIL_SHAPE,
    IDENTIFIER_SPACE,
)
from lockgate.project.models import (
    MAX_ATTRIBUTES,
    MAX_EVENT_NAME_BYTES,
    FieldConfig,
    SyncConfig,
    reads_identify_email,
)
from lockgate.sources.base import is_nan_flag, nan_flag, nan_reason

if TYPE_CHECKING:
    from duckdb.sqltypes import DuckDBPyType

    from lockgate.project.loader import Project

#: identifier types Customer.io knows, in the order one is picked for `identifiers`
CUSTOMERIO_IDENTIFIERS = {"id": "id", "user_id": "id", "cio_id": "cio_id", "email": "email"}
IDENTIFIER_PRIORITY = ("id", "cio_id", "email")
MAX_ID_BYTES = 150
MAX_VALUE_BYTES = 1000
#: what delivery puts before an event's operation: `{"id":"<its 26-character ULID>",`
EVENT_ID_BYTES = len('{"id":"",') + 26
FUTURE_TOLERANCE_SECONDS = 300
#: unix seconds in the year 5138 (unix milliseconds since 1973): a number column's event
#: timestamp from here on is taken for milliseconds in its reject reason
EPOCH_MS_FROM = 10**11

TIMESTAMP_TYPES = ("TIMESTAMP", "DATE")
NUMERIC_TYPES = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
    "FLOAT",
    "DOUBLE",
    "DECIMAL",
)


def q(name: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def lit(value: object) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def quoted(text: str) -> str:
    """SQL for the text ``text`` (SQL of a VARCHAR) as a reject reason quotes it: whole up to
    :data:`~lockgate.errors.QUOTED_CHARS` characters, else its first
    :data:`~lockgate.errors.QUOTED_HEAD` and `… (N characters)`.
    DuckDB's `length` and `left` count characters, not bytes, so no character is cut in two;
    :func:`lockgate.errors.shorten` is the same for the reasons made in Python."""
    return (
        f"case when length({text}) <= {QUOTED_CHARS} then {text} "
        f"else left({text}, {QUOTED_HEAD}) || '… (' || length({text}) || ' characters)' end"
    )


def json_key(name: str) -> str:
    """The JSON text of an object key followed by a colon, as a SQL literal."""
    return lit(orjson.dumps(name).decode() + ":")


@dataclass(frozen=True)
class Compiled:
    """A compiled mapping: the SELECT and what it needs.

    For people, objects and relationships the SELECT also yields ``__rid`` (the staged row)
    and ``src_h``: a hash of the columns the mapping reads and of the sync's configuration,
    which changes exactly when the payload can (see ``diff.diff_records``).
    """

    select: str
    columns_used: tuple[str, ...]
    #: the SELECT list of ``select`` without its FROM (people, objects, relationships), and the
    #: coerced-value columns its inner relation adds (every kind): enough to run the mapping
    #: over another relation (:meth:`keyed_select`, :meth:`over`)
    head: str = ""
    computed: str = ""
    src_h: str = ""
    #: the SELECT list of ``k``, ``__rid`` and ``src_h`` alone, and the coerced-value columns
    #: those read (:meth:`keyed_select`, :meth:`keyed_model`)
    key_head: str = ""
    key_computed: str = ""

    def keyed_select(self, relation: str) -> str:
        """SQL for ``k`` and ``src_h`` of every row of ``relation`` (a relation with the
        model's columns), as this mapping computes them. Only those two expressions (and the
        coerced values they read) are in it: DuckDB would evaluate no more of the whole
        mapping, but it parsed and bound all of it, ~8 ms a time for a people sync."""
        assert self.key_head, "only people, objects and relationships mappings key rows"
        inner = _inner(relation, "null::bigint", self.key_computed)
        return f"select k, src_h from ({self.key_head}{inner})"

    def keyed_model(self) -> str:
        """SQL for ``__rid``, ``k`` and ``src_h`` of every staged row (``model``), as the
        SELECT computes them."""
        assert self.key_head, "only people, objects and relationships mappings key rows"
        return f"{self.key_head}{_inner('model', 'rowid', self.key_computed)}"

    def over(self, relation: str, rid: str) -> str:
        """This mapping's SELECT over ``relation`` (a relation with the model's columns) instead
        of the staged model, with ``rid`` (SQL over the relation's columns) as each row's
        ``__rid``."""
        staged = _inner("model", "rowid", self.computed)
        assert self.select.count(staged) == 1, "the SELECT reads the staged model once"
        return self.select.replace(staged, _inner(relation, rid, self.computed))


def _inner(relation: str, rid: str, computed: str) -> str:
    """``relation`` with ``__rid`` and each coerced value as a column, so each is computed once
    (``computed``: the extra SELECT items, see :meth:`Fields.computed_sql`)."""
    return f"(select *, {rid} as __rid{computed} from {relation})"


def shaping(sync: SyncConfig) -> dict[str, Any]:
    """What of a sync's config shapes its payloads (changing a guardrail or a schedule
    re-sends nothing), as JSON values."""
    return sync.model_dump(
        mode="json",
        include={
            "kind",
            "primary_key",
            "identify_by",
            "mode",
            "attributes",
            "on_null",
            "object_type_id",
            "object_id",
            "relationship_attributes",
        },
    )


def event_key(sync: SyncConfig) -> dict[str, Any] | None:
    """An events sync's `event.id` as JSON (`{"column": "order_id"}` or `{"hash": [...]}`):
    what the keys in its ledger are made of, so a change re-sends every delivered event as a
    new one. None for other kinds. Not part of :func:`shaping`, whose text is in every row's
    hash (adding it there would send every record of every sync again)."""
    if sync.event is None:
        return None
    return sync.event.id.model_dump(mode="json", exclude_none=True)


def event_key_text(key: dict[str, Any]) -> str:
    """An `event.id` as the sync file writes it: `order_id`, `{hash: [order_id, line]}`."""
    if "hash" in key:
        return "{hash: [" + ", ".join(str(c) for c in key["hash"]) + "]}"
    return str(key.get("column"))


def same_identifiers(was: dict[str, str], now: dict[str, str]) -> bool:
    """Whether two `identify_by` address people alike: in any order, `user_id` being the
    alias of `id` (`{id: user_id}` and `{user_id: user_id}` send the same identifiers)."""

    def canonical(identify_by: dict[str, str]) -> dict[str, str]:
        return {CUSTOMERIO_IDENTIFIERS.get(k, k): v for k, v in identify_by.items()}

    return canonical(was) == canonical(now)


def recorded_mapping(sync: SyncConfig) -> dict[str, Any]:
    """What a committed run records of its mapping (``contract_mappings.mapping``): the
    :func:`shaping` and, for an events sync, its :func:`event_key` (`event_key`)."""
    out = shaping(sync)
    key = event_key(sync)
    if key is not None:
        out["event_key"] = key
    if sync.timezone is not None:
        # not in `shaping`, whose text is in every row's hash: a zone changes a payload only
        # where a naive timestamp is sent (`source_hash`); kept for `on_change` (`Rezoned`)
        out["timezone"] = sync.timezone
    return out


#: the zone names that read a naive timestamp as UTC does (no `timezone`): the zone
#: database's names of UTC, as `check_time_zone` spells them (`GMT` never moves a clock)
_UTC_NAMES = (
    None,
    *(
        f"{etc}{name}"
        for etc in ("", "Etc/")
        for name in ("UTC", "UCT", "Universal", "Zulu", "GMT", "GMT0", "GMT+0", "GMT-0")
    ),
    "Greenwich",
    "Etc/Greenwich",
)


def same_zone(was: str | None, now: str | None) -> bool:
    """Whether two `timezone` settings read naive timestamps alike (unset is UTC)."""
    return (was in _UTC_NAMES and now in _UTC_NAMES) or was == now


@dataclass(frozen=True)
class Rezoned:
    """An `on_change` sync whose `timezone` changed since its last committed run: the zone
    that run read naive timestamps in (``was``, None for UTC) and the watched attributes that
    read one. Their values all moved by the offset; a transition fires only when the value
    read in the old zone moved too (the data changed), never for the new reading alone."""

    was: str | None
    attributes: frozenset[str]


def rezoned(
    sync: SyncConfig, columns: dict[str, str], last: dict[str, Any] | None
) -> Rezoned | None:
    """:class:`Rezoned` for ``sync`` over a model of ``columns``, given the mapping its last
    committed run recorded (:func:`recorded_mapping`); None when the zone is the same, or no
    watched attribute reads a naive timestamp as a time (a column, or a `timestamp` or `date`
    constant without an offset)."""
    if not sync.on_change or last is None:
        return None
    was = last.get("timezone")
    if same_zone(was, sync.timezone):
        return None
    naive = set(zoned_columns(sync, columns))
    watched = {
        rule.attribute
        for rule in sync.on_change
        if (spec := sync.attributes.get(rule.attribute)) is not None
        and (
            # a `timestamp` or `date` constant without an offset, a local time in the zone
            spec.in_time_zone(was).value != spec.value
            if spec.value is not None
            else spec.type in ("auto", "timestamp", "date")
            and (spec.column or rule.attribute) in naive
        )
    }
    return Rezoned(was, frozenset(watched)) if watched else None


def shaping_changes(
    was: dict[str, Any], now: dict[str, Any], cleared: tuple[str, ...] = ()
) -> list[str]:
    """What differs between two :func:`shaping` dicts, in words (`added attribute `seats``);
    ``cleared``: the removed attributes this run clears (:func:`removed_attributes`)."""
    out: list[str] = []
    for group in ("attributes", "relationship_attributes"):
        before, after = was.get(group) or {}, now.get(group) or {}
        noun = "attribute" if group == "attributes" else "relationship attribute"
        out += [f"added {noun} `{n}`" for n in after if n not in before]
        # not sent any more is not cleared unless asked: the profiles keep what was sent
        out += [
            f"removed {noun} `{n}` "
            + (
                "(cleared on each record sent: `clear_removed_attributes`)"
                if group == "attributes" and n in cleared
                else "(Customer.io keeps the values sent before)"
            )
            for n in before
            if n not in after
        ]
        out += [f"changed {noun} `{n}`" for n in after if n in before and after[n] != before[n]]
    out += [
        f"changed `{key}`"
        for key in sorted(set(was) | set(now))
        if key not in ("attributes", "relationship_attributes") and was.get(key) != now.get(key)
    ]
    return out


def removed_attributes(sync: SyncConfig, last: dict[str, Any] | None) -> tuple[str, ...]:
    """The attributes a run clears on each record it sends: with `clear_removed_attributes`,
    those the last committed run's mapping (``last``, its :func:`shaping`) had and this one
    has not. They are in the payloads but not in the row hash, so the run after the next
    commit sends nothing for them."""
    if not sync.clear_removed_attributes or not last:
        return ()
    # a people sync identified by email still sends `email`: never clear it
    sent = sync.identify_attributes if sync.kind == "people" else set(sync.attributes)
    return tuple(n for n in last.get("attributes") or {} if n not in sent)


def _clear_removed(fields: Fields, names: tuple[str, ...]) -> None:
    """An `"name":""` (a clear) in every payload for each of ``names``."""
    for name in names:
        fields.present[len(fields.fragments)] = "true"
        fields.fragments.append(lit(orjson.dumps(name).decode() + ':""'))
        fields.cleared.append("true")


def _check_count(sync: SyncConfig, fields: Fields, clear: tuple[str, ...]) -> None:
    """Refuse to build calls whose `attributes` object is over Customer.io's 300 keys: every
    record would be refused, on every run. The file's own count is checked when it loads
    (:meth:`SyncConfig.identify_keys`); what only a run knows comes on top of it: the removed
    attributes it clears, and the attributes the identity graph adds."""
    count = len(fields.fragments)
    if count <= MAX_ATTRIBUTES:
        return
    extra = count - len(sync.attributes) - len(clear)
    parts = [f"{len(sync.attributes)} mapped"]
    if extra:
        parts.append(f"{extra} more of its own (`email`, `_update`)")
    if clear:
        removed = ", ".join(f"`{n}`" for n in clear[:5]) + (
            f" and {len(clear) - 5} more" if len(clear) > 5 else ""
        )
        parts.append(f"{removed}, taken out and cleared by `clear_removed_attributes`")
    raise ConfigError(
        f"sync `{sync.name}`: each call would carry {count} attributes ({', '.join(parts)}); "
        f'Customer.io refuses more than {MAX_ATTRIBUTES} ("cannot identify more than 300 '
        'attributes in one request"), so every record would fail',
        hint=(
            "take attributes out in one run and add new ones in the next (a run that clears "
            f"{len(clear)} has room for {MAX_ATTRIBUTES - count + len(sync.attributes)} "
            "mapped), or leave `clear_removed_attributes` off for this change (Customer.io "
            "then keeps the removed values)"
            if clear
            else f"map at most {MAX_ATTRIBUTES - extra} attributes"
        ),
    )


@dataclass(frozen=True)
class LastHash:
    """The row hash of a sync's last committed run: its SQL (``Compiled.src_h``) and the
    mapping recorded with it (:func:`recorded_mapping`), as the state's `contract_mappings`
    holds them."""

    sql: str
    mapping: dict[str, Any]


def normal_form(shape: dict[str, Any]) -> dict[str, Any]:
    """A :func:`shaping` (of a sync, or one recorded in the state) written one way: two sync
    files that send the same payload for every row have the same normal form, so an edit that
    only spells the mapping differently re-sends nothing (:func:`source_hash`).

    Spellings made one: `primary_key: id` and `[id]`; `identify_by` in any order, `user_id`
    for `id`; attributes in any order; a field's `column` left out (its own name) or written;
    a field's `on_null` left out or written as the sync's; a `default` without `on_null:
    default` (never sent); a constant's `type` (the `value` is already converted to it); the
    default `mode` written or not; an `email` attribute that is the `identify_by` email again
    under the `skip` policy (sent anyway). Anything that can change a payload (an attribute
    added, removed or renamed, its column, type, null policy or constant, the identifiers, the
    key, the mode) still differs."""
    kind = shape.get("kind")
    on_null = shape.get("on_null") or "skip"
    identify_by: dict[str, Any] = dict(shape.get("identify_by") or {})
    aliased = {CUSTOMERIO_IDENTIFIERS.get(k, k): v for k, v in identify_by.items()}
    if len(aliased) == len(identify_by):  # `{id: a, user_id: b}` is refused when compiled
        identify_by = aliased
    key = shape.get("primary_key")
    mode = shape.get("mode") or ("mirror" if kind == "relationships" else "upsert")

    def fields(specs: dict[str, Any] | None, *, email: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, spec in (specs or {}).items():
            if spec.get("value") is not None:
                out[name] = {"value": spec["value"]}
                continue
            field = {
                "column": spec.get("column") or name,
                "type": spec.get("type") or "auto",
                "on_null": spec.get("on_null") or on_null,
            }
            if field["on_null"] == "default":
                field["default"] = spec.get("default")
            if (
                email
                and name == "email"
                and field["column"] == identify_by.get("email")
                and field["type"] in ("auto", "string")
                and field["on_null"] == "skip"
            ):
                continue  # `_identify_email` sends it as it sends the implicit one
            out[name] = field
        return out

    return {
        "kind": kind,
        "primary_key": [key] if isinstance(key, str) else list(key or []),
        "identify_by": identify_by,
        "mode": mode,
        "attributes": fields(shape.get("attributes"), email=kind == "people"),
        "object_type_id": shape.get("object_type_id"),
        "object_id": shape.get("object_id"),
        "relationship_attributes": fields(shape.get("relationship_attributes")),
    }


def kept_constants(sync: SyncConfig, last: LastHash | None, group: str) -> frozenset[str]:
    """The constant fields (`{value: ...}`) of ``group`` (`attributes` or
    `relationship_attributes`) that the mapping recorded by the sync's last committed run
    (``last``) has with the same name and value: that run sent them with every record it
    delivered, and a record delivered before it was sent them then too, or by an earlier run
    under the same constant (a mapping change sends every record again, and a run that leaves
    records to send keeps the mapping recorded before it). Re-sent alone they change nothing
    (``Fields.n_echo``). Empty without a recorded mapping."""
    if last is None:
        return frozenset()
    was = normal_form(last.mapping).get(group) or {}
    now = normal_form(shaping(sync)).get(group) or {}
    return frozenset(n for n, f in now.items() if "value" in f and was.get(n) == f)


def changed_constants(sync: SyncConfig, last: LastHash | None) -> bool:
    """Whether the sync maps a constant that the mapping recorded by its last committed run
    (``last``) did not send alike (added, or its value edited; :func:`kept_constants`). False
    without a recorded mapping: no constant is kept then, whatever the records hold."""
    if last is None:
        return False
    shape = normal_form(shaping(sync))
    return any(
        "value" in spec and name not in kept_constants(sync, last, group)
        for group in ("attributes", "relationship_attributes")
        for name, spec in (shape.get(group) or {}).items()
    )


def _fingerprint(shape: dict[str, Any]) -> str:
    import hashlib

    text = MAPPING_VERSION + orjson.dumps(shape, option=orjson.OPT_SORT_KEYS).decode()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hash_sql(shape: dict[str, Any], columns: Iterable[str]) -> str:
    cols = ", ".join(q(c) for c in columns)
    return f"hash({cols}{', ' if cols else ''}{lit(_fingerprint(shape))})"


#: a row hash with the terms of :func:`_nested_terms`: ``xor(<the hash of _hash_sql>, ...)``
_WITH_TERMS = re.compile(r"xor\((hash\(.*?'[0-9a-f]{16}'\)), ")


def hash_base(sql: str) -> str:
    """A row hash's SQL (``Compiled.src_h``, or one a state recorded) without the terms
    :func:`_nested_terms` adds to it: the hash Lockgate wrote before it had them, of the same
    columns and mapping, whatever the model's types."""
    found = _WITH_TERMS.match(sql)
    return found.group(1) if found else sql


def _nested_terms(columns: Iterable[str], types: dict[str, str]) -> str:
    """SQL xor-ed into the row hash so that it tells apart the rows whose list, map or struct
    values differ; empty when the columns hold none (a model of plain columns pays nothing).

    DuckDB's `hash` of several columns folds a list's items into the row's hash one by one,
    and an empty or null list in any column but the first adds nothing: `[]` and null hash
    alike (as do `[null]`, `{a: null}` and a null struct), an item moved from one list to the
    next, or a list item and a leading zero of the column before it. Each such value adds the
    hash of its column and JSON text, so the row hash changes with every payload, and a row
    whose values are null or plain keeps the hash it had before these terms: only the rows
    holding a list, map or union value, or a struct all of whose fields are null (or that holds
    such a value), hash anew once, and are sent again once."""
    terms = []
    for name in columns:
        col_type = types.get(name, "")
        if not _is_nested(col_type):
            continue
        import duckdb

        c = q(name)
        ambiguous = _ambiguous(c, duckdb.sqltype(col_type))
        when = f"{c} is not null" + ("" if ambiguous == "true" else f" and {ambiguous}")
        # a value holding JSON hashes as its text, as it did when it was staged as text: the
        # same data keeps its hash (`json_values` re-sends the records whose payload changed)
        value = f"{c}::{json_as_text(col_type)}" if holds_json(col_type) else c
        # one text, not `hash(name, json)`: DuckDB folds two arguments into one hash by a
        # product and an xor, so the terms of two columns would cancel out when swapped
        text = f"{lit(name + ':')} || to_json({value})::varchar"
        terms.append(f"case when {when} then hash({text}) else 0::ubigint end")
    out = ""
    for term in reversed(terms):
        out = f"xor({term}, {out})" if out else term
    return out


def hash_over_json(sql: str, types: dict[str, str]) -> str:
    """A row hash's SQL (one a state recorded) read over a model of ``types``: a list, map or
    struct column that holds JSON, staged as text by an earlier Lockgate, is hashed as its text
    as that hash read it (:func:`_nested_terms` does so now), so the same data hashes alike."""
    for name, col_type in types.items():
        if _is_nested(col_type) and holds_json(col_type):
            c = q(name)
            text = f"to_json({c}::{json_as_text(col_type)})::varchar"
            sql = sql.replace(f"to_json({c})::varchar", text)
    return sql


def _is_nested(col_type: str) -> bool:
    """True for a list, array, map, struct or union column type."""
    return col_type.endswith("]") or col_type.upper().startswith(("STRUCT", "MAP", "UNION"))


def _ambiguous(value: str, t: DuckDBPyType) -> str:
    """SQL true when ``value`` (of the nested type ``t``, not null) is one whose part in a row's
    DuckDB hash another value shares (:func:`_nested_terms`): any list, array, map or union,
    and a struct whose fields are all null or hold such a value. A struct of plain fields, not
    all null, adds one hash per field to the row's: always as many, so it is told apart."""
    if t.id != "struct":
        return "true"
    fields = [(f"struct_extract({value}, {lit(name)})", m) for name, m in _members(t)]
    parts = [" and ".join(f"{e} is null" for e, _ in fields)]
    for e, member in fields:
        if member.id in ("list", "array", "map", "struct", "union"):
            inner = _ambiguous(e, member)
            parts.append(f"{e} is not null" + ("" if inner == "true" else f" and {inner}"))
    return "(" + " or ".join(f"({p})" for p in parts) + ")"


def _hash_normal(
    sync: SyncConfig, types: dict[str, str], *, nested_text: bool = True, json_ids: bool = True
) -> dict[str, Any]:
    """What :func:`source_hash` fingerprints: the sync's :func:`normal_form`, and what makes a
    payload other than an earlier Lockgate's for the same row and mapping (each such key a
    fingerprint of its own, never one reused, so each record is sent once again). Without
    ``nested_text``, as a Lockgate that sent DuckDB's text of a nested value did; without
    ``json_ids``, as one that named people and objects by a JSON column's text did."""
    normal = normal_form(shaping(sync))
    named_by_json = json_identifiers(sync, types)
    if named_by_json and json_ids:
        # these name each record by their JSON value where an earlier Lockgate named it by the
        # JSON's text (`"u1"` with its quotes, `null`)
        normal["json_identifiers"] = named_by_json
    as_json = json_values(sync, types)
    if as_json:
        # these fields send JSON values where an earlier Lockgate sent the JSON's text
        normal["json_values"] = as_json
    as_text = nested_as_text(sync, types)
    if as_text and nested_text:
        # these send a list's, map's or struct's JSON text where an earlier Lockgate sent
        # DuckDB's text of it (`[vip, a b]`)
        normal["nested_text"] = as_text
    if not same_zone(None, sync.timezone) and zoned_columns(sync, types):
        # naive timestamps (or text ones without an offset) read in a zone, not as UTC: their
        # values change, so each record is sent once again (remapped). Only then: a sync
        # without such a column, or one reading them as UTC, keeps its hash (`timezone` is not
        # in `shaping`)
        normal["timezone"] = sync.timezone
    return normal


def json_identifiers(sync: SyncConfig, types: dict[str, str]) -> list[str]:
    """The JSON columns that name the records of a people, objects or relationships ``sync``
    (an identifier, an object id), by the JSON value they hold (:func:`_id_text`)."""
    if sync.kind == "events":
        return []
    named = list(sync.identify_by.values())
    if sync.kind == "objects":
        named += sync.key_columns
    if sync.object_id:
        named.append(sync.object_id)
    return sorted({c for c in named if _is(types.get(c, ""), ("JSON",))})


def json_identifier_upgrade(sync: SyncConfig, types: dict[str, str], last_hash: str) -> list[str]:
    """:func:`json_identifiers` when ``last_hash`` (the last committed run's row hash) is the
    one a Lockgate that named records by the JSON's text made: in words, for the `mapping`
    guardrail that says why each record is sent again."""
    columns = json_identifiers(sync, types)
    before = lit(_fingerprint(_hash_normal(sync, types, json_ids=False)))
    if not columns or before not in last_hash:
        return []
    return [
        f"`{c}` (JSON) names each record by the JSON value it holds, no longer by the JSON's "
        'text (`"u1"` with its quotes)'
        for c in columns
    ]


def nested_as_text(sync: SyncConfig, types: dict[str, str]) -> list[str]:
    """The attributes of ``sync`` (of people, objects, relationships) that read a list, map
    or struct column as `type: string`: sent as the value's JSON text (:func:`coerce`)."""
    return sorted(
        {
            name
            for group in (sync.attributes, sync.relationship_attributes)
            for name, spec in group.items()
            if spec.value is None
            and spec.type == "string"
            and _is_nested(types.get(spec.column or name, ""))
        }
    )


def nested_text_upgrade(sync: SyncConfig, types: dict[str, str], last_hash: str) -> list[str]:
    """:func:`nested_as_text`'s fields when ``last_hash`` (the last committed run's row hash)
    is the one a Lockgate that sent DuckDB's text of them made: in words, for the `mapping`
    guardrail that says why each record is sent again."""
    fields = nested_as_text(sync, types)
    before = lit(_fingerprint(_hash_normal(sync, types, nested_text=False)))
    if not fields or before not in last_hash:
        return []
    return [
        f"`{name}` (`type: string` over a list, map or struct) sent as the value's JSON text, "
        "no longer as DuckDB's text of it"
        for name in fields
    ]


def source_hash(
    sync: SyncConfig,
    columns: tuple[str, ...],
    types: dict[str, str],
    last: LastHash | None = None,
) -> str:
    """SQL for ``src_h``: the row's mapped columns plus a fingerprint of the sync's config, both
    taken from its :func:`normal_form` (the columns in name order), so an edit that changes no
    payload keeps every row's hash and sends nothing; ``types`` are the model's column types,
    for the terms that tell apart list, map and struct values (:func:`_nested_terms`).

    ``last``: the last committed run's hash, reused when it was made before hashes were
    normalised (the same SQL without :func:`normal_form`, the columns in the file's order) of
    this same mapping, or of one with the same normal form under this `MAPPING_VERSION` (its
    fingerprint is that of the mapping recorded with it). Upgrading Lockgate, with or without
    such an edit, then re-sends nothing; the run records the hash it reused with the mapping it
    was made from, and the first real mapping change (which re-sends every record anyway)
    moves the state to the normal form. A hash recorded before the nested terms is reused with
    them added (:func:`hash_base`)."""
    shape = shaping(sync)
    names = sorted(set(columns))
    terms = _nested_terms(names, types)

    def with_terms(base: str) -> str:
        return f"xor({base}, {terms})" if terms else base

    normal = _hash_normal(sync, types)
    sql = _hash_sql(normal, names)
    if last is None or normal != normal_form(shape):  # a payload an earlier Lockgate's is not
        return with_terms(sql)
    base = hash_base(last.sql)
    if base == sql:
        return with_terms(sql)
    if base == _hash_sql(shape, dict.fromkeys(columns)):
        return with_terms(base)
    fingerprint = lit(_fingerprint(last.mapping)) + ")"
    if base.endswith(fingerprint) and normal_form(last.mapping) == normal_form(shape):
        return with_terms(base)
    return with_terms(sql)


#: the columns the identity graph adds for its attributes (a Stripe id...) start so
#: (:func:`lockgate.sync.resolve.graph_attribute_column`); their `""` is a clear the graph
#: sends on purpose (a value moved to another profile), not an empty string of the model
GRAPH_ATTRIBUTE_PREFIX = "_lg_attr_"

#: bump when the SQL this module generates changes what is sent for the same row
MAPPING_VERSION = "1"


def needs_identity(project: Project, sync: SyncConfig) -> bool:
    """True when the sync's rows go through the identity graph: every people, events and
    relationships sync of a project with an `identity:` section, and any sync that keys rows
    by identifier types Customer.io does not know by itself (which then needs one)."""
    native = set(CUSTOMERIO_IDENTIFIERS) | (
        {"anonymous_id"} if sync.kind == "relationships" else set()
    )
    if any(kind not in native for kind in sync.identify_by):
        return True
    return project.config.identity is not None and sync.kind != "objects"


def _is(col_type: str, prefixes: tuple[str, ...]) -> bool:
    """True for a scalar column of one of these types; a list of them (`VARCHAR[]`) is not."""
    return not col_type.endswith("]") and col_type.upper().startswith(prefixes)


def is_naive(col_type: str) -> bool:
    """True for a timestamp column without a time zone (`TIMESTAMP`, `TIMESTAMP_NS`...: a
    Postgres `timestamp`, a Snowflake `TIMESTAMP_NTZ`, a BigQuery `DATETIME`), whose values
    are wall-clock times: read in the sync's `timezone`, else as UTC."""
    return _is(col_type, ("TIMESTAMP",)) and "TIME ZONE" not in col_type.upper()


def _sent_fields(sync: SyncConfig) -> Iterator[tuple[str, FieldConfig]]:
    """(name, spec) of every field ``sync`` sends: attributes, relationship attributes,
    properties and the properties of its `on_change` rules."""
    for group in (
        sync.attributes,
        sync.relationship_attributes,
        sync.properties,
        *(rule.properties for rule in sync.on_change),
    ):
        yield from group.items()


def naive_columns(sync: SyncConfig, columns: dict[str, str]) -> list[str]:
    """The columns of ``columns`` (the model's, name -> DuckDB type) that ``sync`` sends as
    instants and hold timestamps without a time zone: those its `timezone` reads (UTC when
    unset). A field sent as text (`type: string`, `json`) keeps the wall clock it holds."""
    out = [
        spec.column or name
        for name, spec in _sent_fields(sync)
        if spec.value is None and spec.type in ("auto", "timestamp", "date")
    ]
    if sync.event is not None and sync.event.timestamp:
        out.append(sync.event.timestamp)
    return [c for c in dict.fromkeys(out) if is_naive(columns.get(c, ""))]


def zoned_columns(sync: SyncConfig, columns: dict[str, str]) -> list[str]:
    """The columns of ``columns`` whose values `timezone` moves: the naive timestamps of
    :func:`naive_columns`, and the text ones read as a `timestamp` or `date` (their values
    without an offset are local times in the zone, see :func:`_text_instant`)."""
    text = [
        spec.column or name
        for name, spec in _sent_fields(sync)
        if spec.value is None
        and spec.type in ("timestamp", "date")
        and _is(json_read(columns.get(spec.column or name, ""), spec.type)[0], ("VARCHAR",))
    ]
    if sync.event is not None and sync.event.timestamp:
        ts = sync.event.timestamp
        if _is(json_read(columns.get(ts, ""), "timestamp")[0], ("VARCHAR",)):
            text.append(ts)
    return list(dict.fromkeys([*naive_columns(sync, columns), *text]))


#: a type named JSON in a DuckDB type's text, and the quoted names and strings to skip over
#: (a struct field `"json"`, an enum value `'JSON'`)
_JSON_WORD = re.compile(r"\"(?:[^\"]|\"\")*\"|'(?:[^']|'')*'|\bJSON\b")


def holds_json(col_type: str) -> bool:
    """True for a JSON column type, or a list, struct or map one holding JSON at any depth
    (`JSON[]`, `STRUCT(plan JSON)`)."""
    return "JSON" in col_type and any(m.group() == "JSON" for m in _JSON_WORD.finditer(col_type))


def json_as_text(col_type: str) -> str:
    """``col_type`` with each JSON in it VARCHAR: the type a column holding JSON was staged as
    before the Arrow copy kept JSON (``STRUCT(plan JSON)`` -> ``STRUCT(plan VARCHAR)``)."""
    return _JSON_WORD.sub(lambda m: "VARCHAR" if m.group() == "JSON" else m.group(), col_type)


def json_read(col_type: str, ftype: str) -> tuple[str, str]:
    """How a field of type ``ftype`` reads a column of ``col_type``: (the type it reads the
    column as, the type it coerces it under). A column holding JSON (a DuckDB `JSON`, a
    Postgres `json`/`jsonb`, a Snowflake `VARIANT`) sends, under `auto`, the JSON value it
    holds: a scalar one as `type: json` sends text (a JSON `null` is a null, `"pro"` the string
    `pro`), a list or struct holding JSON with the JSON values in it. Any other type reads the
    column as its text, as it always did. Every other column: as it is."""
    if not holds_json(col_type):
        return col_type, ftype
    if _is(col_type, ("JSON",)):
        return "VARCHAR", "json" if ftype == "auto" else ftype
    if ftype in ("auto", "json"):
        return col_type, "auto"
    return json_as_text(col_type), ftype


def json_values(sync: SyncConfig, types: dict[str, str]) -> list[str]:
    """The fields of ``sync`` that send the JSON values a column holds where an earlier Lockgate
    sent the JSON's text (`"\\"pro\\""` for `"pro"`, `"null"` for `null`): `auto` over a
    column holding JSON, and `type: json` over a list or struct holding it. Named in the row
    hash's fingerprint (:func:`source_hash`), so each record is sent once again, counted as
    remapped, and Customer.io holds the values."""
    out = []
    for group in (sync.attributes, sync.relationship_attributes):
        for name, spec in group.items():
            if spec.value is not None:
                continue
            col_type = types.get(spec.column or name, "")
            if holds_json(col_type) and (
                spec.type == "auto" or (spec.type == "json" and not _is(col_type, ("JSON",)))
            ):
                out.append(name)
    return sorted(set(out))


#: column types whose text (``::varchar``) is already their JSON: integers and booleans
_JSON_AS_TEXT = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "BOOLEAN",
)


def json_is_text(col_type: str, ftype: str) -> bool:
    """True when the coerced value (see :func:`coerce`) is an integer or a boolean, whose
    ``::varchar`` is its JSON: cheaper than ``to_json`` (0.1 s per million rows and field)."""
    if ftype in ("timestamp", "date", "boolean", "integer"):
        return True
    return ftype == "auto" and _is(col_type, (*TIMESTAMP_TYPES, *_JSON_AS_TEXT))


#: column types whose value is short as sent, whatever the field's type: a number, a boolean,
#: a date, a time, an interval or a UUID. Any other (text, JSON, a list, a struct, a map, a
#: BLOB, an enum...) can be over Customer.io's 1,000-byte value limit
_SHORT = (*NUMERIC_TYPES, "BOOLEAN", "DATE", "TIME", "TIMESTAMP", "INTERVAL", "UUID")


def may_exceed(col_type: str, ftype: str) -> bool:
    """True when a field's value as sent can be over Customer.io's 1,000-byte limit and is not
    a VARCHAR column's own text (whose length :func:`field_fragment` checks on the column).
    False for every number, boolean and timestamp field, so plain columns pay nothing."""
    if ftype not in ("auto", "string", "json") or _is(col_type, _SHORT):
        return False
    return ftype == "json" or not _is(col_type, ("VARCHAR",))


def _oversized(column: str, field: str, sent: str) -> str:
    """SQL for the reject reason of a value whose JSON text as sent, ``sent``, is over the
    limit, else null. Customer.io measures a string by its own UTF-8 bytes and any other value
    by its JSON text's (the emulator's ``nbytes``); a string's JSON text is longer than the
    string, so only a text over the limit pays for reading the string out of it."""
    size = (
        f"case when starts_with({sent}, '\"') then strlen({sent} ->> '$') else strlen({sent}) end"
    )
    tail = (
        f" bytes as sent, over the {MAX_VALUE_BYTES}-byte limit of Customer.io; "
        "trim it in the model or map its parts to separate attributes"
    )
    reason = f"{lit(f'column `{column}` (field `{field}`): value is ')} || {size} || {lit(tail)}"
    # nested: a CASE evaluates a branch only for the rows that reach it
    return (
        f"case when strlen({sent}) > {MAX_VALUE_BYTES} then "
        f"case when {size} > {MAX_VALUE_BYTES} then {reason} end end"
    )


def _constant_bytes(value: object) -> int:
    """Customer.io's size of a constant value: a string's UTF-8 bytes, else its JSON's."""
    return len(value.encode()) if isinstance(value, str) else len(orjson.dumps(value))


def _single_as_double(value: str) -> str:
    """SQL for a single-precision ``value`` (a DuckDB `FLOAT`, a Postgres or Redshift `real`)
    as the double of its shortest text, the number the warehouse prints: widened as it is, a
    `real` 19.99 is 19.989999771118164, and `to_json` writes that. Snowflake's `FLOAT` is a
    double already, so the same model sent 19.99 from there."""
    return f"({value})::varchar::double"


def _finite(value: str) -> str:
    """SQL for a double ``value``, null when it is NaN or infinite (JSON has no such number)."""
    return f"case when isfinite({value}) then {value} end"


#: a JSON text (as DuckDB writes it) with a NaN or infinity literal outside its strings:
#: every string is skipped whole (escapes included), so a member `"NaN"` or a key `"info"` is
#: not one; outside strings a JSON text has no other letters but true/false/null and exponents
_NON_FINITE_JSON = r'^(?:[^"]|"(?:[^"\\]|\\.)*")*?(?i:nan|inf)'


#: where a NaN or infinity literal may start in a JSON text: after `[`, `,`, `:` or space
_NON_FINITE_START = r"(?i)(?:^|[\[,:\s])[-+]?(?:nan|inf)"


#: a JSON number whose magnitude may be past a double's (an exponent of 3 digits, or 309
#: digits), where a value may start (after `[`, `,`, `:` or space): not inside a string
_HUGE_NUMBER = (
    r"(?:^|[\[,:\s])(-?(?:\d{309,}(?:\.\d+)?(?:[eE][+-]?\d+)?|\d+(?:\.\d+)?[eE]\+?\d{3,}))"
)


def _huge_json_number(text: str) -> str:
    """SQL true when the JSON ``text`` holds a number no double can hold (`1e400`): Customer.io
    cannot read it. Only text with an exponent of 3 digits or a run of 309 digits pays for
    reading its numbers."""
    return (
        rf"(regexp_matches({text}, '\d[eE]\+?\d{{3}}|\d{{309}}') and list_bool_or("
        f"list_transform(regexp_extract_all({text}, {lit(_HUGE_NUMBER)}, 1), "
        "lambda x: isinf(x::double))))"
    )


def _non_finite_json(text: str) -> str:
    """SQL true when the JSON ``text`` holds a NaN or infinite number (DuckDB reads and writes
    them as bare `NaN`/`Infinity`, which no JSON parser, Customer.io's included, accepts)."""
    return f"regexp_matches({text}, {lit(_NON_FINITE_JSON)})"


def _is_float(t: DuckDBPyType) -> bool:
    return t.id in ("float", "double")


def _members(t: DuckDBPyType) -> list[tuple[str, DuckDBPyType]]:
    """A nested type's named member types: a list's `child`, a map's `key` and `value`, a
    struct's fields, a union's tag (named ``""``) and members (an array's size is left out)."""
    return [(name, m) for name, m in t.children if not isinstance(m, int | list)]


def _non_finite(value: str, t: DuckDBPyType) -> str | None:
    """SQL true when ``value``, of type ``t``, holds a NaN or infinite float at any depth
    (null or false otherwise), or None when ``t`` holds no float. Lists, arrays, maps and
    structs of floats are checked without building their JSON; a list of structs or maps,
    rare, is checked on its JSON text."""
    if _is_float(t):
        return f"not isfinite({value})"
    if t.id in ("list", "array"):
        return _non_finite_items(value, _members(t)[0][1])
    if t.id == "map":
        return _non_finite_items(f"map_values({value})", _members(t)[1][1])
    if t.id in ("struct", "union"):
        extract = "struct_extract" if t.id == "struct" else "union_extract"
        members = [
            _non_finite(f"{extract}({value}, {lit(name)})", member)
            for name, member in _members(t)
            if name  # a union's first child is its unnamed tag
        ]
        found = [m for m in members if m is not None]
        return "(" + " or ".join(found) + ")" if found else None
    return None


def _non_finite_items(items: str, t: DuckDBPyType) -> str | None:
    """:func:`_non_finite` for a list ``items`` whose elements are of type ``t``."""
    if _is_float(t):
        # DuckDB sorts NaN above +Infinity: a list's extremes are finite only when all of it is
        return f"not (isfinite(list_min({items})) and isfinite(list_max({items})))"
    if t.id in ("list", "array"):
        return _non_finite_items(f"flatten({items})", _members(t)[0][1])
    if _non_finite("x", t) is None:
        return None
    return _non_finite_json(f"to_json({items})::varchar")


def _nested_non_finite(column: str, col_type: str) -> str | None:
    """:func:`_non_finite` for a list, array, map or struct column; None for any other column
    and for those that hold no float, so the common case pays nothing."""
    upper = col_type.upper()
    if not ("FLOAT" in upper or "DOUBLE" in upper):
        return None
    if not (col_type.endswith("]") or upper.startswith(("STRUCT", "MAP", "UNION"))):
        return None
    import duckdb

    return _non_finite(q(column), duckdb.sqltype(col_type))


def _seconds(timestamp: str) -> str:
    """SQL for the unix second a timestamp falls in: 23:59:59.6 is still that day (a cast of
    ``epoch``'s fraction to bigint would round it up to the next), and 1969-12-31 23:59:59.5
    is -1. In integers: ``epoch``'s double has too few digits for a microsecond past year
    9999 (`20241-01-01 00:00:01` gave `...400`) nor near the end of a second in far years
    (`9999-12-31 23:59:59.999999` gave year 10000). Null for ±infinity, as ``epoch``'s was.
    DuckDB's `//` truncates towards zero: the remainder, made positive, is taken off first."""
    us = f"epoch_us({timestamp})"
    return f"(({us} - (({us} % 1000000) + 1000000) % 1000000) // 1000000)"


#: 9999-12-31 23:59:59 UTC + 1 s: the unix seconds a TIMESTAMP can still hold
_YEAR_10000 = 253_402_300_800


def _utc(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _utc_text(seconds: str) -> str:
    """SQL for the unix second ``seconds`` (a bigint, not null) as a UTC date and time, as
    :func:`_utc` writes it; beyond year 9999, the number itself."""
    return (
        f"case when {seconds} < {_YEAR_10000} then "
        f"strftime(make_timestamp(({seconds})::bigint * 1000000), '%Y-%m-%d %H:%M:%S UTC') "
        f"else {seconds}::varchar || ' (unix seconds)' end"
    )


def local_instant(wall: str, zone: str) -> str:
    """SQL for the instant (a TIMESTAMPTZ) the naive timestamp ``wall`` is as a wall-clock
    time in the IANA zone ``zone``, daylight saving time included, by one rule wherever
    Lockgate reads a local time (naive columns, text and constants without an offset; so the
    event timestamp, the future check and the backfill window agree):

    - a time the clocks pass twice as they go back (01:30 on New York's fall-back night) is
      the *earlier* of the two (01:30 EDT, 05:30 UTC), as Python (`fold=0`) and java.time
      read it. DuckDB's `timezone()` (ICU), like Postgres, gives the later one
      (01:30 EST): an event logged at 01:30 EDT was then an hour in the future, rejected as
      such by a run in that hour, and sent an hour late by the next.
    - a time the clocks skip as they go forward (02:30 on the spring-forward night) is read
      with the offset in force before the change, so moved forward by the gap (02:30 EST,
      07:30 UTC, which is 03:30 EDT): `timezone()`'s, Postgres's, Python's (`fold=0`) and
      java.time's reading alike.

    `timezone()` gives the later reading; the offset in force a day before it, if larger
    (the clocks went back within that day), gives a candidate that is the earlier reading
    when it shows the same wall-clock time. ±infinity stays infinite; null stays null."""
    z = lit(zone)
    later = f"timezone({z}, {wall})"
    # how far the clocks went back in the day before `later` (µs; 0 when they did not): the
    # wall-clock time a day before it, a day on, less ``wall``
    day = 86_400_000_000
    back = f"(epoch_us(timezone({z}, {later} - interval '24 hours')) + {day} - epoch_us({wall}))"
    earlier = f"({later} - to_microseconds({back}))"
    same_wall = f"timezone({z}, {earlier}) = {wall}"
    return f"(case when {back} > 0 and {same_wall} then {earlier} else {later} end)"


def _text_instant(text: str, zone: str | None) -> str:
    """SQL for the instant (a TIMESTAMPTZ, or null) the text ``text`` holds, read as a
    timestamp: ISO 8601 (`2026-07-01T09:00:00Z`, `2026-07-01 09:00:00+02:00`) or with a zone
    name (`2026-07-01 09:00:00 America/New_York`), each that instant. Text without an offset
    (`2026-07-01 09:00:00`) is a local time in ``zone``, read as a naive timestamp column is
    (:func:`local_instant`, daylight saving time included); with no zone, as UTC (the state
    engine's session zone), as it always was. Text holding only a date (`2026-07-01`) is a
    calendar day, its midnight UTC, as a date column's.

    Which text has no offset is DuckDB's parser's answer, with no regex per row: text it reads
    with ` UTC` added after it names no zone of its own (`...Z UTC`, `...+02:00 UTC` and
    `2026-07-01 UTC` are not timestamps)."""
    instant = f"try_cast({text} as timestamptz)"
    if zone is None:
        return instant
    local = local_instant(f"try_cast({text} as timestamp)", zone)
    return (
        f"case when try_cast(trim({text}) || ' UTC' as timestamptz) is not null "
        f"then {local} else {instant} end"
    )


def naive_note(sync: SyncConfig, columns: dict[str, str]) -> str | None:
    """What `lockgate plan` says once of a sync that reads timestamps without a time zone and
    names no `timezone` (nor does its source): they are read as UTC, which a model of local
    wall-clock times sends hours off. None when there are none, or a zone is set."""
    if sync.timezone is not None:
        return None
    naive = naive_columns(sync, columns)
    return naive_text(naive) if naive else None


def naive_text(naive: list[str]) -> str:
    """:func:`naive_note`'s line, of the naive timestamp columns ``naive`` (not empty)."""
    names = ", ".join(f"`{c}`" for c in naive)
    if len(naive) == 1:
        what, holds = f"column {names} is a timestamp without time zone", "it holds"
    else:
        what, holds = f"columns {names} are timestamps without time zone", "they hold"
    return f"{what}, read as UTC (set `timezone:` on the sync or its source if {holds} local times)"


def coerce(
    sync: str,
    field: str,
    column: str,
    col_type: str,
    ftype: str,
    *,
    attribute: bool = False,
    zone: str | None = None,
) -> tuple[str, str]:
    """SQL for a column's value after coercion, and SQL for its reject reason (or NULL).

    A value the field's type cannot carry to Customer.io as itself (NaN or an infinity in a
    number, a list or a struct, a fraction as an integer, text that is not JSON) is never
    sent as something else: its value is null and the reason names the column and field.

    ``attribute``: the value is an attribute (of a person, object or relationship), which
    Customer.io removes when it is sent as `""`. An empty string (text, whatever the field's
    type, or a `json` field's JSON string `""`) is then a null, so the field's `on_null`
    applies: skipped by default, counted by `max_cleared` under `clear`, instead of a model
    that turned its nulls into `''` erasing the attribute while the run counts nothing
    cleared (or, under a `number`, `timestamp` or `boolean` type, its row rejected).

    ``zone``: the IANA time zone a timestamp without a time zone holds the local times of (the
    sync's `timezone`), else UTC. :func:`local_instant` reads it, daylight saving time
    included: a wall-clock time the clocks skip (02:30 as New York springs forward) is read
    with the offset in force before the change (02:30 EST, 07:30 UTC, which is 03:30 EDT),
    and one they pass twice (01:30 as they fall back) is the first of the two, before the
    change (01:30 EDT, 05:30 UTC). A date is a calendar day, its midnight UTC
    whatever the zone. Text read as a timestamp is read as :func:`_text_instant` says: one
    with an offset (`Z`, `+02:00`) or a zone name is that instant; one without is a local time
    in ``zone`` too (as UTC when unset).
    """
    if ftype == "string" and _is_nested(col_type):
        # a list, map or struct as one string: the JSON text of the value `auto` sends (its
        # NaN rejected as there), not DuckDB's text of it (`{'city': Oslo}`, `{lang=en}`),
        # which no JSON reader takes
        value, reason = coerce(sync, field, column, col_type, "auto", attribute=attribute)
        text = f"{_to_json(value, col_type)}::varchar"
        return text, reason if reason == "null" else reason.replace(value, text)
    read_as, ftype = json_read(col_type, ftype)
    if read_as != col_type:  # a column holding JSON, read as its text (see `json_read`)
        c = f"{q(column)}::{read_as}"
        if _is(col_type, ("JSON",)) and ftype != "json":
            # a JSON `null` is no text: a null, as under `auto` (`type: string` sent the text
            # `null`, over the value held; the other types rejected the row)
            c = f"case when {_json_kind(q(column))} is distinct from 'NULL' then {c} end"
        col_type = read_as
    elif attribute and _is(col_type, ("VARCHAR",)):
        c = f"nullif({q(column)}, '')"  # an attribute's `''` is a null (above)
    else:
        c = _single_as_double(q(column)) if _is(col_type, ("FLOAT",)) else q(column)
    is_str = _is(col_type, ("VARCHAR",))
    is_float = _is(col_type, ("FLOAT", "DOUBLE"))
    bad = f"{lit(f'column `{column}` (field `{field}`): value `')} || {quoted(f'{c}::varchar')} || "

    def check(converted: str, what: str) -> str:
        tail = lit(f"` is not {what}")
        return f"case when {c} is not null and {converted} is null then {bad}{tail} end"

    def epoch() -> tuple[str, str]:
        # `infinity` (DuckDB, Postgres) has no unix second: reject it, never send it as null
        if _is(col_type, ("DATE",)):
            converted = _seconds(f"try_cast({c} as timestamp)")
            return converted, check(converted, "a finite date")
        local = c
        if zone is not None and is_naive(col_type):
            # the wall-clock time in the sync's `timezone` (`infinity` stays infinite). Of a
            # `TIMESTAMP_NS` (`_S`, `_MS`), its second: `timezone()` gives those a
            # `TIMESTAMPTZ_NS`, and a cast to `TIMESTAMP` rounds `.9999995` up to the next second
            wall = (
                c if col_type.upper() == "TIMESTAMP" else f"make_timestamp({_seconds(c)} * 1000000)"
            )
            local = local_instant(wall, zone)
        converted = _seconds(local)
        return converted, check(converted, "a finite timestamp")

    def nested() -> tuple[str, str] | None:
        # `to_json` writes a NaN inside a list or struct as `NaN`: invalid JSON, and
        # Customer.io refuses the whole batch it is in
        non_finite = _nested_non_finite(column, col_type)
        if holds_json(col_type):
            # the JSON values in it are written as they are: one DuckDB reads (`NaN`, `1e400`)
            # and no JSON parser does would make the whole payload invalid
            text = f"to_json({c})::varchar"
            bad = f"({_non_finite_json(text)} or {_huge_json_number(text)})"
            non_finite = bad if non_finite is None else f"({non_finite} or {bad})"
        if non_finite is None:
            return None
        converted = f"case when {non_finite} then null else {c} end"
        return converted, check(converted, "JSON (it holds NaN or Infinity)")

    if ftype == "auto":
        if _is(col_type, ("DATE", "TIMESTAMP")):
            return epoch()
        if _is(col_type, ("DECIMAL", "HUGEINT", "UHUGEINT")):
            return f"{c}::double", "null"
        if _is(col_type, ("UUID", "INTERVAL", "TIME", "BLOB", "BIT")):
            return f"{c}::varchar", "null"
        if is_float:
            # NaN and Infinity have no JSON form: `to_json` would write `NaN`, invalid JSON
            converted = _finite(c)
            return converted, check(converted, "a finite number")
        return nested() or (c, "null")
    if ftype in ("timestamp", "date"):
        if _is(col_type, ("DATE", "TIMESTAMP")):
            return epoch()
        if _is(col_type, NUMERIC_TYPES):
            # an integer is cast as it is: `floor` made a HUGEINT a double, so the reason
            # quoted 2^53 + 1 as `...992` (NaN failed the whole run)
            whole = c if _is(col_type, _INTEGERS) else f"floor({c})"
            converted = f"try_cast({whole} as bigint)"
            finite = "true" if _is(col_type, _INTEGERS) else f"isfinite({c}::double)"
            beyond = lit(
                "` is not unix seconds (it is beyond the 64-bit range of a time); check what the "
                "column holds"
            )
            return converted, (
                f"case when {c} is not null and {converted} is null then {bad}case when "
                f"{finite} then {beyond} else {lit('` is not a finite unix timestamp')} end end"
            )
        converted = _seconds(_text_instant(c, zone if is_str else None))
        return converted, check(converted, "a timestamp (use ISO 8601, e.g. 2026-01-31T12:00:00Z)")
    if ftype == "boolean":
        if _is(col_type, ("BOOLEAN",)):
            return c, "null"
        if is_float:
            # NaN is neither zero nor non-zero (`NaN <> 0` holds, so it was sent as true);
            # an infinity is a number of definite sign, non-zero, so it is true as 2.5 is
            converted = f"case when not isnan({c}) then {c} <> 0 end"
            return converted, check(converted, "a boolean (true/false/1/0)")
        if _is(col_type, NUMERIC_TYPES):
            return f"({c} <> 0)", "null"
        converted = f"try_cast(lower(trim({c}::varchar)) as boolean)"
        return converted, check(converted, "a boolean (true/false/1/0)")
    if ftype == "number":
        # a `BIT` string cast to a double is its bits read as one (`101` was 2.5e-323): its
        # number is the integer an `integer` field sends (`101` is 5)
        number = f"try_cast({c} as bigint)" if _is(col_type, ("BIT",)) else c
        converted = _finite(f"try_cast({number} as double)")
        return converted, check(converted, "a number")
    if ftype == "integer":
        # `whole`: SQL true when a value the cast fails on is a whole number all the same, so
        # beyond the 64-bit range rather than not an integer
        if is_float or _is(col_type, ("DECIMAL",)):
            # a cast rounds (2.5 became 2 from a double, 3 from a decimal): a fraction is
            # rejected, never sent as another number; NaN and infinities fail the cast
            converted = f"case when {c} = floor({c}) then try_cast({c} as bigint) end"
            whole = f"{c} = floor({c})" + (f" and isfinite({c})" if is_float else "")
        elif is_str:
            # text is cast as a decimal, so `'1.5'` became 2: the integer must equal the number
            number = f"try_cast({c} as double)"
            converted = f"case when {number} = floor({number}) then try_cast({c} as bigint) end"
            whole = f"isfinite({number}) and {number} = floor({number})"
        else:
            converted = f"try_cast({c} as bigint)"
            whole = "true" if _is(col_type, _INTEGERS) else "false"
        range_tail = lit(
            f"` is beyond the 64-bit integer range ({-(2**63)} to {2**63 - 1}) of an `integer` "
            "field; `type: string` sends its digits as text"
        )
        return converted, (
            f"case when {c} is not null and {converted} is null then {bad}"
            f"case when {whole} then {range_tail} else {lit('` is not an integer')} end end"
        )
    if ftype == "string":
        if is_float:
            # `nan`/`inf` as text would be a string where a number was meant; a `number`
            # field rejects them, so a `string` one does too
            converted = f"case when isfinite({c}) then {c}::varchar end"
            return converted, check(converted, "a finite number")
        return f"{c}::varchar", "null"
    if ftype == "json":
        if is_str:
            # `json_valid` accepts `NaN` and `Infinity` (DuckDB reads them), which no JSON
            # parser does. Only text naming them (`contains` is 3x cheaper than a regex) where
            # a value may start (not in `"info"`) pays for the exact check on its normal form;
            # nested cases, as `json()` fails on invalid text and `and` may run both sides
            # a JSON `null` is a null (the field's `on_null` applies): sent, it would erase
            # the attribute while the run counted nothing cleared. A number past a double's
            # range (`1e400`) is valid JSON that Customer.io cannot read: rejected
            lowered = f"lower({c})"
            # the text `null`, maybe with JSON's white space: no second parse of every value;
            # for an attribute, the JSON string `""` too, which would erase it as well
            nulls = "('null', '\"\"')" if attribute else "('null')"
            json_null = f"(strlen({c}) <= 12 and trim({c}, ' \t\n\r') in {nulls})"
            huge = _huge_json_number(c)
            converted = (
                f"case when not json_valid({c}) then null when {json_null} or {huge} then null "
                f"when not (contains({lowered}, 'nan') or contains({lowered}, 'inf')) "
                f"then {c}::json "
                f"when not regexp_matches({c}, {lit(_NON_FINITE_START)}) then {c}::json "
                f"when not {_non_finite_json(f'json({c})::varchar')} then {c}::json end"
            )
            reason = (
                f"case when not json_valid({c}) then {bad}{lit('` is not valid JSON')} "
                f"when {json_null} then null when {huge} then "
                f"{bad}{lit('` holds a number too large for a double (over 1.8e308)')} "
                f"else {bad}{lit('` is not valid JSON')} end"
            )
            return converted, f"case when {c} is not null and {converted} is null then {reason} end"
        if is_float:
            converted = f"to_json({_finite(c)})"
            return converted, check(converted, "a finite number")
        found = nested()
        if found is not None:
            converted = f"to_json({found[0]})"
            return converted, check(converted, "JSON (it holds NaN or Infinity)")
        return f"to_json({c})", "null"
    raise ConfigError(f"sync `{sync}`: unknown type `{ftype}` for field `{field}`")


#: what a constant of each type looks like, for the error about one that is not
_CONSTANT_EXAMPLES = {
    "timestamp": "an ISO 8601 time such as `2030-01-01T00:00:00Z`, or unix seconds",
    "date": "a date such as `2030-01-01`, or unix seconds",
    "boolean": "`true` or `false`",
    "integer": "a whole number such as `10`",
    "number": "a number such as `9.5`",
    "json": "JSON text, or the value itself written in YAML",
}


def coerce_constant(value: Any, ftype: str, *, zone: str | None = None) -> Any:
    """A field's constant (`value:`, or the `default:` of `on_null: default`) as a column
    holding it is sent under ``ftype``: the same SQL (:func:`coerce` and the JSON it is written
    as) run over a one-row relation, so `type: timestamp` makes `"2030-01-01T00:00:00Z"` unix
    seconds, as every non-null row of the field is. A ValueError says why a constant the type
    cannot take is refused, and what it would take. ``zone``: the sync's `timezone`, in which
    a time without an offset (`"2030-01-01 09:00:00"`) is a local time, as a text column's."""
    if value is None or ftype == "auto" or (ftype == "json" and not isinstance(value, str)):
        return value  # `auto` keeps the constant's own type; YAML already wrote the JSON
    if ftype == "string" and isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        shape = "a list" if isinstance(value, list) else "a mapping"
        raise ValueError(
            f"{shape} cannot be sent as `type: {ftype}`; use `type: json`, or leave `type` out"
        )
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if ftype in ("timestamp", "date") and numeric and value >= EPOCH_MS_FROM:
        # as a number column's value is rejected (`field_fragment`): sent as it is, it would be
        # a time tens of thousands of years ahead
        raise ValueError(
            f"`{value}` is not unix seconds (it would be past the year 5000): it looks like "
            f"milliseconds; write `{int(value) // 1000}`"
        )
    if isinstance(value, bool):
        literal, col_type = ("true" if value else "false"), "BOOLEAN"
    elif isinstance(value, int):
        literal, col_type = f"{value}::hugeint", "HUGEINT"
        if not -(2**127) <= value < 2**127:
            raise ValueError(f"`{value}` is beyond the integers a warehouse column holds")
    elif isinstance(value, float):
        literal, col_type = f"{lit(repr(value))}::double", "DOUBLE"
    else:  # text, and the dates and times YAML reads from an unquoted ISO value
        text = value.isoformat() if hasattr(value, "isoformat") else str(value)
        literal, col_type = lit(text), "VARCHAR"

    computed: list[tuple[str, str]] = []
    spec = FieldConfig.model_validate({"column": "c", "type": ftype})
    fragment, checks, _, _ = field_fragment(
        "", "c", spec, {"c": col_type}, "skip", computed, limit=False, zone=zone
    )
    inner = _inner(
        f"(select {literal} as c)",
        "0",
        "".join(f", {expr} as {q(alias)}" for alias, expr in computed),
    )
    reason = f"coalesce({', '.join(checks)})" if checks else "null"
    from lockgate.scratch import scratch

    with scratch() as con:
        con.execute("set TimeZone='UTC'")
        row = con.execute(f"select {fragment}, {reason} from {inner}").fetchone()
    assert row is not None
    sent, why = row
    if sent is None:
        # the reason names the stand-in column and quotes the value: keep what it says of it
        said = "is " + (why or "not convertible").rsplit("` is ", 1)[-1]
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        example = (
            "" if "e.g." in said else f"; a `type: {ftype}` constant is {_CONSTANT_EXAMPLES[ftype]}"
        )
        raise ValueError(f"`{shown}` {said}{example}")
    return orjson.loads(sent.removeprefix('"c":'))


@dataclass
class Fields:
    """Field fragments of one object plus the coerced values they read (computed once)."""

    computed: list[tuple[str, str]] = field(default_factory=list)  # (alias, expression)
    fragments: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)  # expressions true when a field is cleared
    columns: list[str] = field(default_factory=list)
    # fragment index -> a cheap SQL test of "this fragment is not null", so counting the
    # attributes set does not build every fragment's JSON a second time (1.7 s at 1M rows)
    present: dict[int, str] = field(default_factory=dict)
    # fragment index -> SQL true when the fragment is present only to repeat what the record
    # already holds: the `email` attribute holding the row's email identifier (the diff
    # compares identifiers with the snapshot's itself), and a constant of :attr:`kept`; see
    # :meth:`n_echo`
    echo: dict[int, str] = field(default_factory=dict)
    #: the constant fields (`{value: ...}`) the sync's last committed run sent with the same
    #: name and value (:func:`kept_constants`): every record it delivered holds them
    kept: frozenset[str] = frozenset()
    #: the fields are Customer.io attributes, each value at most 1,000 bytes; event properties
    #: are not (their limit is the 100,000 bytes of the whole event data)
    limit_values: bool = True
    #: the sync's `timezone`: what its naive timestamps are read in (see :func:`coerce`)
    zone: str | None = None

    def add(
        self,
        sync: str,
        name: str,
        spec: FieldConfig,
        columns: dict[str, str],
        default_on_null: str,
    ) -> None:
        before = len(self.computed)
        fragment, checks, column, cleared = field_fragment(
            sync,
            name,
            spec,
            columns,
            default_on_null,
            self.computed,
            limit=self.limit_values,
            zone=self.zone,
        )
        value = q(self.computed[-1][0]) if len(self.computed) > before else None
        if value is None or not fragment.startswith(f"case when {value} is null then null "):
            self.present[len(self.fragments)] = "true"  # a constant, a default or a clear
            if spec.value is not None and name in self.kept:
                self.echo[len(self.fragments)] = "true"  # as last delivered
        else:
            self.present[len(self.fragments)] = f"{value} is not null"
        self.fragments.append(fragment)
        self.checks.extend(checks)
        if cleared:
            self.cleared.append(cleared)
        if column:
            self.columns.append(column)

    def computed_sql(self) -> str:
        """The coerced values as extra SELECT items (``, <expr> as "<alias>"`` each)."""
        return "".join(f", {expr} as {q(alias)}" for alias, expr in self.computed)

    def inner_select(self) -> str:
        """The model with each coerced value as a column, so each is computed once."""
        return _inner("model", "rowid", self.computed_sql())

    def compiled(
        self, head: str, columns_used: tuple[str, ...], src_h: str, key: str = ""
    ) -> Compiled:
        """The mapping whose SELECT list is ``head`` over :meth:`inner_select`; ``src_h`` is
        the SQL of its row hash (over the model's own columns only), ``key`` that of its
        ``k`` (for :meth:`Compiled.keyed_select`)."""
        key_head = key_computed = ""
        if key:
            key_head = f"select {key} as k, __rid, {src_h} as src_h from "
            key_computed = "".join(
                f", {expr} as {q(alias)}" for alias, expr in self._read_by(key + " " + src_h)
            )
        return Compiled(
            head + self.inner_select(),
            columns_used,
            head,
            self.computed_sql(),
            src_h,
            key_head,
            key_computed,
        )

    def _read_by(self, sql: str) -> list[tuple[str, str]]:
        """The computed columns ``sql`` reads, and those they read in turn, in their order (a
        name found in a literal adds a column not needed, never leaves one out)."""
        named: set[str] = set()
        text = sql
        while True:
            more = [
                (alias, expr)
                for alias, expr in self.computed
                if alias not in named and re.search(rf"(?<!\w){re.escape(alias)}(?!\w)", text)
            ]
            if not more:
                return [(a, e) for a, e in self.computed if a in named]
            for alias, expr in more:
                named.add(alias)
                text += " " + expr

    def n_set(self) -> str:
        return (
            " + ".join(
                f"({self.present.get(i) or f + ' is not null'})::int"
                for i, f in enumerate(self.fragments)
            )
            or "0"
        )

    def n_cleared(self) -> str:
        return " + ".join(f"({c})::int" for c in self.cleared) or "0"

    def n_echo(self) -> str:
        """SQL for how many of the fragments counted by :meth:`n_set` are :attr:`echo`: when
        the two are equal the payload carries no attribute value but what the record holds
        already (every other one null under `on_null: skip`), and a record delivered before,
        to the same identifiers, has nothing to be sent (``diff._nothing_to_send``). A
        constant "0" for most syncs."""
        return " + ".join(f"({e})::int" for e in self.echo.values()) or "0"


def field_fragment(
    sync: str,
    name: str,
    spec: FieldConfig,
    columns: dict[str, str],
    default_on_null: str,
    computed: list[tuple[str, str]],
    *,
    limit: bool = True,
    zone: str | None = None,
) -> tuple[str, list[str], str | None, str | None]:
    """SQL yielding `"name":<json>` (or NULL to omit), reject checks, the column used, and
    an expression true when the field is cleared. The coerced value is added to ``computed``.

    With ``limit`` (attributes, not event properties), a value over Customer.io's 1,000-byte
    limit rejects its row, naming the column and field; a constant or a default over it is a
    configuration error."""
    key = json_key(name)
    policy = spec.on_null or default_on_null
    if limit:
        used = (("value", spec.value), ("default", spec.default if policy == "default" else None))
        for what, constant in used:
            if constant is not None and _constant_bytes(constant) > MAX_VALUE_BYTES:
                raise ConfigError(
                    f"sync `{sync}`: the `{what}` of field `{name}` is "
                    f"{_constant_bytes(constant)} bytes, over the {MAX_VALUE_BYTES}-byte limit "
                    "of Customer.io for one value",
                    hint="shorten it, or map its parts to separate attributes",
                )
    if spec.value is not None:
        constant = orjson.dumps(name).decode() + ":" + orjson.dumps(spec.value).decode()
        return lit(constant), [], None, None
    column = spec.column or name
    if column not in columns:
        raise ConfigError(
            f"sync `{sync}`: field `{name}` reads column `{column}`, "
            "which the model does not return",
            hint=columns_hint(columns),
        )
    col_type = columns[column]
    # `type: json` over a number column (or a list, struct or map holding numbers) is that
    # value as JSON: sent as `auto` sends it, so a whole value is an integer (`5`, not `5.0` or
    # a decimal's `5.00`)
    numbers = _is(col_type, NUMERIC_TYPES) or _nested_numbers(col_type)
    ftype: str = "auto" if spec.type == "json" and numbers else spec.type
    # the identity graph's own `""` clears a value that moved to another profile
    attribute = limit and not column.startswith(GRAPH_ATTRIBUTE_PREFIX)
    expression, check = coerce(sync, name, column, col_type, ftype, attribute=attribute, zone=zone)
    # a column holding JSON is read as `coerce` reads it (`json_read`)
    col_type, ftype = json_read(col_type, ftype)
    alias = f"__v{len(computed)}"
    # a value that can be over the limit is kept as the JSON text it is sent as, built once for
    # the fragment and its size check (`to_json` of null is null, so `check` still holds)
    sized = limit and may_exceed(col_type, ftype)
    # only an `auto` value keeps the column's type: any other is coerced to a scalar
    value_type = col_type if ftype == "auto" else ftype
    computed.append(
        (alias, f"{_to_json(expression, value_type)}::varchar" if sized else expression)
    )
    value = q(alias)
    checks = [check.replace(expression, value)] if check != "null" else []
    if sized:
        checks.append(_oversized(column, name, value))
    if ftype in ("timestamp", "date") and _is(col_type, NUMERIC_TYPES):
        # a number column is read as unix seconds: one of milliseconds (how JavaScript, Kafka
        # and many exports write time) was sent as a time tens of thousands of years ahead,
        # as an event's timestamp is refused (`EPOCH_MS_FROM`)
        checks.append(
            f"case when {value} >= {EPOCH_MS_FROM} then "
            f"{lit(f'column `{column}` (field `{name}`): value `')} || {value} || "
            f"{lit('` is not unix seconds (it would be past the year 5000): it looks like ')}"
            f" || {lit(f'milliseconds; divide it in the model, e.g. `{column} // 1000 as ')}"
            f" || {lit(f'{column}`')} end"
        )
    if limit and _is(col_type, ("VARCHAR",)) and ftype in ("auto", "string"):
        checks.append(
            f"case when strlen({q(column)}) > {MAX_VALUE_BYTES} then "
            f"{lit(f'column `{column}` (field `{name}`): value is ')} || strlen({q(column)}) || "
            f"{lit(f' bytes, over the {MAX_VALUE_BYTES}-byte limit of Customer.io')} end"
        )
    text = json_is_text(col_type, ftype)
    number = _number_json(value, column, col_type, ftype)
    # concat(), one allocation, not a chain of `||`: the value is not null in this branch
    if sized:
        encoded = f"concat({key}, {value})"
    elif number is not None:
        encoded = f"concat({key}, {number})"
    elif text:
        encoded = f"concat({key}, {value}::varchar)"
    else:
        encoded = f"concat({key}, {_to_json(value, value_type)})"
    cleared = None
    if policy == "clear":
        fragment = f"case when {value} is null then {key} || '\"\"' else {encoded} end"
        cleared = f"{value} is null"
    elif policy == "default":
        default = lit(orjson.dumps(spec.default).decode())
        fragment = f"case when {value} is null then {key} || {default} else {encoded} end"
    else:
        fragment = f"case when {value} is null then null else {encoded} end"
    return fragment, checks, column, cleared


#: 64-bit integers, signed and unsigned: the integers a JSON reader takes as integers
MIN_JSON_INT, MAX_JSON_INT = -(2**63), 2**64 - 1
_INTEGERS = tuple(t for t in _JSON_AS_TEXT if t != "BOOLEAN") + ("HUGEINT", "UHUGEINT")


def _number_json(value: str, column: str, col_type: str, ftype: str) -> str | None:
    """SQL for the JSON text of a number field (``value``, the coerced value, not null), or
    None when the field is not one whose value is sent as a non-integer number type.

    Numbers are written as JSON tools (Segment, Hightouch, Census) write them: a whole value
    as an integer, `5` and not `5.0`, which Customer.io's Liquid prints as `5.0`. A whole
    value of an integer or decimal column (a DuckDB `sum()` is a HUGEINT, a Snowflake
    NUMBER(38,0) a decimal) is read from the column itself, so every digit of a 64-bit
    integer is kept; a double is an integer up to 2^53, the integers a double holds exactly.
    Anything else (a fraction, a larger magnitude) is sent as the double it is."""
    if ftype not in ("auto", "number"):
        return None
    c = q(column)
    double = f"to_json({value})"
    if _is(col_type, ("DECIMAL", *_INTEGERS)):
        if ftype == "auto" and not _is(col_type, ("DECIMAL", "HUGEINT", "UHUGEINT")):
            return None  # sent as its own text (json_is_text)
        whole = f"{c} = trunc({c}) and " if _is(col_type, ("DECIMAL",)) else ""
        low = "" if _is(col_type, ("U",)) else f"{c} >= {MIN_JSON_INT} and "
        return (
            f"case when {whole}{low}{c} <= {MAX_JSON_INT} then {c}::hugeint::varchar "
            f"else {double} end"
        )
    if ftype == "number" or _is(col_type, ("FLOAT", "DOUBLE")):
        return _whole_float_json(value)
    return None


def _whole_float_json(x: str) -> str:
    """SQL for the JSON text of the double ``x`` (not null): an integer when it is whole and
    exact (up to 2^53), else the double as ``to_json`` writes it."""
    return (
        f"case when abs({x}) <= {MAX_EXACT_FLOAT} and {x} = trunc({x}) "
        f"then {x}::bigint::varchar else to_json({x})::varchar end"
    )


_WHOLE_NUMBERS = ("FLOAT", "DOUBLE", "DECIMAL", "HUGEINT")  # UHUGEINT contains HUGEINT


def _nested_numbers(col_type: str) -> bool:
    """True for a list, array, struct or map type that may hold a float, decimal or huge
    integer (whose JSON :func:`_to_json` writes); a cheap test on the type's text."""
    upper = col_type.upper()
    nested = col_type.endswith("]") or upper.startswith(("STRUCT", "MAP"))
    return nested and any(n in upper for n in _WHOLE_NUMBERS)


def _json_number(x: str, t: DuckDBPyType) -> str | None:
    """SQL for the JSON text of ``x`` (not null), a number of type ``t`` that ``to_json`` may
    write with a fraction or beyond what JSON readers take as an integer; None for any other
    type. A whole value is an integer, as a scalar number field sends it (:func:`_number_json`)."""
    if _is_float(t):
        return _whole_float_json(_single_as_double(x) if t.id == "float" else x)
    if t.id in ("decimal", "hugeint", "uhugeint"):
        # as `_number_json`: an unsigned value is never compared with a negative bound (DuckDB
        # casts the bound to the value's type, and fails)
        whole = f"{x} = trunc({x}) and " if t.id == "decimal" else ""
        low = "" if t.id == "uhugeint" else f"{x} >= {MIN_JSON_INT} and "
        return (
            f"case when {whole}{low}{x} <= {MAX_JSON_INT} "
            f"then {x}::hugeint::varchar else to_json({x}::double)::varchar end"
        )
    return None


def _json_text(x: str, t: DuckDBPyType, depth: int = 0) -> str:
    """SQL for the JSON text of ``x`` of type ``t`` (`null` when null): ``to_json``'s, except
    that every float, decimal or huge integer in it, at any depth (in lists, arrays, structs
    and maps), is written by :func:`_json_number`."""
    number = _json_number(x, t)
    if number is not None:
        return f"coalesce({number}, 'null')"
    if not _holds_whole_numbers(t):
        return f"coalesce(to_json({x})::varchar, 'null')"
    var = f"__j{depth}"
    if t.id in ("list", "array"):
        element = _json_text(var, _members(t)[0][1], depth + 1)
        items = f"array_to_string(list_transform({x}, lambda {var}: {element}), ',')"
        return f"case when {x} is null then 'null' else '[' || {items} || ']' end"
    if t.id == "map":
        value = _json_text(f"{var}.value", _members(t)[1][1], depth + 1)
        pair = f"to_json({var}.key::varchar)::varchar || ':' || {value}"
        items = f"array_to_string(list_transform(map_entries({x}), lambda {var}: {pair}), ',')"
        return f"case when {x} is null then 'null' else '{{' || {items} || '}}' end"
    if t.id == "struct":
        fields = " || ',' || ".join(
            f"{json_key(name)} || {_json_text(f'struct_extract({x}, {lit(name)})', m, depth)}"
            for name, m in _members(t)
        )
        return f"case when {x} is null then 'null' else '{{' || {fields} || '}}' end"
    return f"coalesce(to_json({x})::varchar, 'null')"  # a union: as DuckDB writes it


def _holds_whole_numbers(t: DuckDBPyType) -> bool:
    if _json_number("x", t) is not None:
        return True
    if t.id not in ("list", "array", "map", "struct"):
        return False
    return any(_holds_whole_numbers(m) for _, m in _members(t))


def _to_json(value: str, col_type: str) -> str:
    """SQL for the JSON of ``value`` (a value of type ``col_type``): ``to_json``,
    except that every whole float or decimal in a list, array, struct or map is an integer, as
    a scalar number is (:func:`_number_json`): `[5, 2.5]` and `{"floor": 5}`, not `[5.0, 2.5]`
    and `{"floor": 5.0}`. NaN and infinities were rejected by :func:`coerce`; a null stays
    `null`."""
    if not _nested_numbers(col_type):
        return f"to_json({value})"
    import duckdb

    t = duckdb.sqltype(col_type)
    if not _holds_whole_numbers(t):
        return f"to_json({value})"
    return f"case when {value} is null then null else ({_json_text(value, t)})::json end"


def _object(fragments: list[str]) -> str:
    if not fragments:
        return "'{}'"
    return "'{' || concat_ws(',', " + ", ".join(fragments) + ") || '}'"


#: a float beyond 2^53 is not exact: as an identifier it would name another person
MAX_EXACT_FLOAT = 2**53
CAST_THE_ID = "; cast the column to bigint or text in the model"


def _id_text(column: str, col_type: str) -> str:
    """SQL for an identifier column's text. A number is sent as its integer's text: a float or
    decimal column's `123.0` or `123.00` would be a person of its own, apart from `123`. A
    fraction, NaN, an infinity or a float too large to be exact gives null (the row is
    rejected naming the column, see :func:`identifier_sql`)."""
    c = q(column)
    if _is(col_type, ("FLOAT", "DOUBLE")):
        return _whole_float_text(c)
    if _is(col_type, ("DECIMAL",)):
        return f"case when {c} = floor({c}) then {c}::hugeint::varchar end"
    if _is(col_type, ("JSON",)):
        valid = _valid_json(c)
        value = f"({valid}->>'$')"
        # the JSON value, not its text: the string `"u1"` names `u1`, not `"u1"` with its
        # quotes (a Postgres `props->'id'`, where `->>` was meant); a JSON `null` is a null, an
        # object or an array names no one (both rejected, see :func:`_id_checks`)
        return (
            f"case {_json_kind(c)} when 'DOUBLE' then {_whole_float_text(f'({valid})::double')} "
            f"when 'VARCHAR' then {value} when 'BIGINT' then {value} "
            f"when 'UBIGINT' then {value} when 'BOOLEAN' then {value} end"
        )
    return f"{c}::varchar"


def _whole_float_text(c: str) -> str:
    """SQL for the integer text of the float ``c`` when it is whole and exact (up to 2^53),
    else null."""
    return (
        f"case when isfinite({c}) and {c} = floor({c}) and abs({c}) <= {MAX_EXACT_FLOAT} "
        f"then {c}::bigint::varchar end"
    )


def _json_kind(value: str) -> str:
    """SQL for the type of the JSON ``value`` (`VARCHAR`, `NULL`, `OBJECT`...), null when it is
    not valid JSON: a Postgres `json` keeps text DuckDB's parser refuses (a lone surrogate,
    `"\\ud800"`), on which `json_type` fails the whole query. `json_type` is given valid JSON
    alone (:func:`_valid_json`), as DuckDB may evaluate it before the `case` that guards it."""
    return f"(case when json_valid({value}) then json_type({_valid_json(value)}) end)"


def _valid_json(value: str) -> str:
    """SQL for the JSON ``value`` as text when it is valid JSON, else `null`: an argument no
    JSON function fails on."""
    return f"(case when json_valid({value}) then {value}::varchar else 'null' end)"


def null_sql(column: str, col_type: str) -> str:
    """SQL true when ``column`` holds no value: null, or a JSON column's `null` (which names
    no person, key or object, as a null does)."""
    c = q(column)
    if _is(col_type, ("JSON",)):
        return f"({c} is null or {_json_kind(c)} is not distinct from 'NULL')"
    return f"{c} is null"


def _trim(text: str) -> str:
    """SQL for the text ``text`` without the white space at either end (every character in
    :data:`IDENTIFIER_SPACE`, not only spaces): a CSV load's trailing newline or a leading tab
    is no part of an id or an email, and kept it names a person (or object) of its own.

    A text whose first and last characters are printable ASCII has none to trim: only the
    others pay for `trim` with the set (8x plain `trim`'s cost at 1M rows; this test is
    cheaper than plain `trim`)."""
    printable = "between 33 and 126"
    return (
        f"case when ascii({text}) {printable} and ascii(({text})[-1]) {printable} then {text} "
        f"else trim({text}, {lit(IDENTIFIER_SPACE)}) end"
    )


def email_match(text: str) -> str:
    """SQL: the email ``text`` as Customer.io matches it: trimmed as an identifier is sent
    (:func:`_trim`), in lower case. A state written before identifiers lost every white space
    character (only spaces) may hold an email with a tab or a newline around it: compared
    this way, it is still the email sent now."""
    return f"lower({_trim(text)})"


def _one_value(sync: str, what: str, column: str, col_type: str) -> None:
    """Refuse an identifier or object id read from a list, struct or map column: each row
    was sent with the value's text (`[1]`, `{'a': 1}`) as the id, a profile or object nobody
    means, where the sync file named the wrong column or the model did not pick the value."""
    kind = col_type.upper()
    if not (kind.endswith("]") or kind.startswith(("STRUCT(", "MAP(", "UNION("))):
        return
    pick = (
        f"`{column}[1] as {column}`"
        if kind.endswith("]")
        else f"`{column}.id as {column}`"
        if kind.startswith("STRUCT(")
        else f"`{column}['id'] as {column}`"
    )
    raise ConfigError(
        f"sync `{sync}`: {what} reads column `{column}` of type {col_type}, which holds "
        "several values; an id is one value",
        hint=f"pick the one value in the model (e.g. {pick}) or name another column",
    )


def _id_checks(column: str, col_type: str, what: str, text: str) -> list[str]:
    """The reject check of a number column that :func:`_id_text` cannot name (none for text
    and integer columns); ``text`` is the computed column holding its id text."""
    c = q(column)
    value = f"{lit(f'column `{column}` ({what}): value `')} || {quoted(f'{c}::varchar')} || "
    if _is(col_type, ("JSON",)):
        pick = "; pick the value in the model as text (Postgres `->>`, not `->`)"
        many = lit("` is a JSON ") + f" || lower({_json_kind(c)}) || " + lit(f", not one id{pick}")
        whole = lit(f"` is not a whole number a float holds exactly (up to 2^53){pick}")
        return [
            f"case when {text} is null and not json_valid({c}) then "
            f"{value}{lit('` is not valid JSON')} "
            f"when {text} is null and {_json_kind(c)} in ('OBJECT', 'ARRAY') then "
            f"{value}{many} when {text} is null and {_json_kind(c)} = 'DOUBLE' then "
            f"{value}{whole} end"
        ]
    if _is(col_type, ("FLOAT", "DOUBLE")):
        why = "` is not a whole number a float holds exactly (up to 2^53)"
    elif _is(col_type, ("DECIMAL",)):
        why = "` is not a whole number"
    else:
        return []
    why = lit(why + CAST_THE_ID)
    return [f"case when {c} is not null and {text} is null then {value}{why} end"]


def identifier_sql(
    sync: SyncConfig, columns: dict[str, str], fields: Fields
) -> tuple[str, str, list[str]]:
    """(identifiers JSON for the op, all identifiers JSON, reject checks).

    Each identifier's cleaned value is added to ``fields.computed`` so it is computed once.
    """
    chosen: dict[str, str] = {}
    for kind, column in sync.identify_by.items():
        target = CUSTOMERIO_IDENTIFIERS.get(kind)
        if kind == "anonymous_id" and sync.kind == "relationships":
            target = "anonymous_id"  # an object can be related to a person not identified yet
        if target is None:
            raise ConfigError(
                f"sync `{sync.name}`: identifier type `{kind}` is not one Customer.io knows",
                hint="use `id` (or `user_id`), `email` or `cio_id`; other types need identity "
                "resolution (docs/identity.md)",
            )
        if column not in columns:
            raise ConfigError(
                f"sync `{sync.name}`: identifier `{kind}` reads column `{column}`, "
                "which the model does not return",
                hint=columns_hint(columns),
            )
        if target in chosen:
            raise ConfigError(f"sync `{sync.name}`: two columns map to Customer.io `{target}`")
        _one_value(sync.name, f"identifier `{kind}`", column, columns[column])
        chosen[target] = column
    values: dict[str, str] = {}
    for target, col in chosen.items():
        text = _trim(_id_text(col, columns[col]))
        if target == "cio_id":
            text = _trim(f"regexp_replace({text}, '^cio_', '')")
        values[target] = f"nullif({text}, '')"
    checks = [
        check
        for target, col in chosen.items()
        for check in _id_checks(col, columns[col], f"identifier `{target}`", q(f"__id_{target}"))
    ]
    for target, expression in list(values.items()):
        alias = f"__id_{target}"
        fields.computed.append((alias, expression))
        values[target] = q(alias)
    ordered = [t for t in (*IDENTIFIER_PRIORITY, "anonymous_id") if t in values]
    whens = " ".join(
        f"when {values[t]} is not null then '{{\"{t}\":' || to_json({values[t]}) || '}}'"
        for t in ordered
    )
    identifiers = f"case {whens} end"
    ident = _object(
        [
            f"case when {values[t]} is null then null else '\"{t}\":' || to_json({values[t]}) end"
            for t in ordered
        ]
    )
    names = " or ".join(f"`{chosen[t]}`" for t in ordered)
    # null in the model, or text with nothing but white space (trimmed to nothing)
    blank = "is blank (only white space)" if len(ordered) == 1 else "is null or blank"
    raw_null = " and ".join(null_sql(chosen[t], columns[chosen[t]]) for t in ordered)
    missing = (
        f"case when {raw_null} then {lit(f'no identifier: {names} is null')} "
        f"else {lit(f'no identifier: {names} {blank}')} end"
    )
    if sync.model_identifiers != sync.identify_by:  # keyed through the identity graph
        columns_read = " or ".join(f"`{c}`" for c in dict.fromkeys(sync.model_identifiers.values()))
        missing = lit(
            "no identifier: the identity graph gives this row no Customer.io id or email "
            f"({columns_read} is null, or on a profile without one)"
        )
    # every identifier null (each `when` above gives text for a value): the test, not the
    # identifiers' JSON built to be looked at (0.05 s of a first run's 1M rows)
    none = " and ".join(f"{values[t]} is null" for t in ordered)
    kept = ""
    if sync.kind == "relationships":
        # a row with no person: its key (person and object) is not the relationship it may
        # have delivered, which is kept meanwhile (`diff._rejected_unaddressed`); say so, and
        # what to do. So for an id that is no whole number, when the row has no other. A row
        # with no object either names no relationship of anyone: nothing is kept for it
        kept = f" || case when __obj is not null then {lit(RELATIONSHIP_KEPT)} else '' end"
        missing = f"{missing} || {lit('; fix it in the model or at the source')}{kept}"
        checks = [
            f"{check} || case when {none} and __obj is not null "
            f"then {lit(RELATIONSHIP_KEPT)} else '' end"
            for check in checks
        ]
    checks.append(f"case when {none} then {missing} end")
    if "id" in values:
        too_long = lit(f"column `{chosen['id']}`: id is over {MAX_ID_BYTES} bytes")
        checks.append(f"case when strlen({values['id']}) > {MAX_ID_BYTES} then {too_long} end")
    if "email" in values:
        # checked wherever the email is what addresses the row: alone, or because every
        # identifier before it is null (a row with a null id is addressed by its email, and
        # `n/a` or `a@x.com, b@y.com` would create a person named by it, or rename one)
        email = values["email"]
        before = "".join(f" and {values[t]} is null" for t in ordered[: ordered.index("email")])
        checks.append(
            f"case when {email} is not null{before} and {not_an_email(email)} "
            f"then {email_reason(chosen['email'], email)}{kept} end"
        )
    return identifiers, ident, checks


RELATIONSHIP_KEPT = (
    " (while it is rejected, the relationships of its object that left the model as it came or"
    " changed are kept: it may be the row of one)"
)
"""The end of the reason of a relationships row rejected with no person to send it to: it
may be the row of a relationship delivered before, which is kept until the row is fixed or
leaves (``diff._kept_unaddressed``)."""


RELATIONSHIP_KEPT_OF_PERSON = (
    " (while it is rejected, the relationships of its person that left the model as it came or"
    " changed are kept: it may be the row of one)"
)
"""The end of the reason of a relationships row of a person rejected with no object: it may
be the row of a relationship delivered before, which is kept until the row is fixed or leaves
(``diff._kept_unaddressed``)."""


def not_an_email(text: str) -> str:
    """SQL: true when the (trimmed, non-null) ``text`` is no email address a sync sends
    (:data:`~lockgate.project.identity.EMAIL_SHAPE`, at most
    :data:`~lockgate.project.identity.EMAIL_MAX_CHARS` characters). One regular expression
    and a byte count on every row (`strlen` is free; `length` counts characters, so it runs
    only on the rare text over the bound in bytes)."""
    return (
        f"(not regexp_matches({text}, {lit(EMAIL_SHAPE)}) "
        f"or (strlen({text}) > {EMAIL_MAX_CHARS} and length({text}) > {EMAIL_MAX_CHARS}))"
    )


#: white space and control characters: the forbidden characters but the separators
_EMAIL_SPACE = "".join(c for c in EMAIL_FORBIDDEN if c not in ",;:<>")

#: the control characters (C0 but NUL, DEL, C1), shown as `�` in a reason
_CONTROL = "".join(chr(c) for c in (*range(1, 32), *range(0x7F, 0xA0)))


def email_reason(column: str, text: str) -> str:
    """SQL: the reject reason of the email ``text`` read from ``column`` that
    :func:`not_an_email` refuses: the value (a control character shown as `�`, so the reason
    stays one line), what is wrong with it and what to do. Run on rejected rows only."""
    shown = quoted(f"regexp_replace({text}, {lit(f'[{_CONTROL}]')}, {lit(chr(0xFFFD))}, 'g')")
    space = f"regexp_matches({text}, {lit(f'[{_EMAIL_SPACE}]')})"
    why = [
        (
            f"length({text}) > {EMAIL_MAX_CHARS}",
            f"length({text}) || "
            + lit(f" characters, over the {EMAIL_MAX_CHARS} an address can have"),
        ),
        (
            f"{text} like '%@%@%' and ({space} or regexp_matches({text}, '[,;]'))",
            lit("more than one address: keep one"),
        ),
        (f"lower({text}) like 'mailto:%'", lit("a link: drop the `mailto:` before the address")),
        (
            f"contains({text}, '<')",
            lit("a name and an address: keep the address between `<` and `>`"),
        ),
        (f"not contains({text}, '@')", lit("no `@`")),
        (f"{text} like '%@%@%'", lit("more than one `@`")),
        (space, lit("white space or a control character in it")),
        (f"regexp_matches({text}, '[,;:>]')", lit("`,`, `;`, `:` or `>` in it")),
        (f"starts_with({text}, '@')", lit("nothing before the `@`")),
        (f"ends_with({text}, '@')", lit("no domain after the `@`")),
        (f"ends_with({text}, '.')", lit("a dot at the end: drop it")),
        (f"not contains(split_part({text}, '@', 2), '.')", lit("no dot in its domain")),
    ]
    whens = " ".join(f"when {test} then {hint}" for test, hint in why)
    return (
        f"{lit(f'column `{column}`: `')} || {shown} || '` is not an email address (' || "
        f"case {whens} else 'an empty part in its domain' end || "
        "'); fix it in the model or at the source'"
    )


def composite_key_sql(key_columns: list[str], types: dict[str, str] | None = None) -> str:
    """SQL for a row's snapshot key: the one key column as text, or several joined by `|`.

    Each part has `\\` and `|` escaped (`\\\\`, `\\|`), so no two lists of values give the same
    key (`'a|b', 'c'` and `'a', 'b|c'` did before) while keys whose parts hold neither
    character read exactly as they always have: snapshots written earlier stay valid. A JSON
    column's `null` (``types``: the model's column types) is a null part, as SQL's null is.
    """
    types = types or {}

    def text(k: str) -> str:
        if _is(types.get(k, ""), ("JSON",)):
            return f"case when {_json_kind(q(k))} is distinct from 'NULL' then {q(k)}::varchar end"
        return f"{q(k)}::varchar"

    if len(key_columns) == 1:
        return text(key_columns[0])
    parts = ", ".join(f"replace(replace({text(k)}, '\\', '\\\\'), '|', '\\|')" for k in key_columns)
    return f"concat_ws('|', {parts})"


def compile_sync(
    sync: SyncConfig,
    columns: dict[str, str],
    default_on_null: str,
    now_epoch: int,
    clear: tuple[str, ...] = (),
    last: LastHash | None = None,
    *,
    history: bool = False,
    rezone: Rezoned | None = None,
) -> Compiled:
    """The SELECT of any sync kind over a model with ``columns`` (name -> DuckDB type); a
    column the sync file names that the model lacks is a :class:`ConfigError` naming both.
    ``clear``: attributes to clear on every people or objects record
    (:func:`removed_attributes`); ``last``: the last committed run's row hash
    (:func:`source_hash`); ``history``: every event of an events sync without a timestamp is
    backfill (its first run, with `backfill.older` a rename: the model's history goes out
    under the backfill name); ``rezone``: the `on_change` values to compare in the last run's
    zone (:class:`Rezoned`)."""
    try:
        if sync.kind == "people":
            return compile_people(sync, columns, default_on_null, clear, last, rezone)
        if sync.kind == "objects":
            return compile_objects(sync, columns, default_on_null, clear, last, rezone)
        if sync.kind == "relationships":
            return compile_relationships(sync, columns, default_on_null, last)
        return compile_events(sync, columns, now_epoch, history=history)
    except ConfigError as exc:
        if sync.graph_columns and exc.hint == columns_hint(columns):
            # the model's own columns: those the identity graph added cannot be named
            exc.hint = columns_hint(c for c in columns if c not in sync.graph_columns)
        raise


def columns_hint(columns: Iterable[str]) -> str:
    """The hint of an error naming a column the model lacks: the columns it has (not the NaN
    flags a source added, see :func:`nan_checks`)."""
    own = (c for c in columns if not is_nan_flag(c))
    return f"the model's columns are {', '.join(f'`{c}`' for c in own)}"


def nan_checks(used: Iterable[str], columns: dict[str, str]) -> list[str]:
    """The reject checks of the rows whose column ``used`` by the mapping held a numeric
    `NaN`: a source reads a `numeric(p,s)` `NaN`, which no decimal holds, as null and sets the
    row's NaN flag (:data:`~lockgate.sources.base.NAN_FLAG_PREFIX`, one of ``columns``). The
    row is rejected, as one whose float column holds NaN is, never sent with the value missing;
    a column the mapping does not read lets its row go on."""
    return [
        f"case when {q(nan_flag(column))} then {lit(nan_reason(column))} end"
        for column in dict.fromkeys(used)
        if nan_flag(column) in columns
    ]


def compile_people(
    sync: SyncConfig,
    columns: dict[str, str],
    default_on_null: str,
    clear: tuple[str, ...] = (),
    last: LastHash | None = None,
    rezone: Rezoned | None = None,
) -> Compiled:
    """The SELECT producing (k, op, ident, reject, n_set, n_cleared, n_echo, addr) for a
    people sync (``n_echo``: :meth:`Fields.n_echo`)."""
    used: list[str] = list(sync.identify_by.values())
    for key in sync.key_columns:
        if key not in columns:
            raise ConfigError(
                f"sync `{sync.name}`: primary key column `{key}` is not in the model",
                hint=columns_hint(columns),
            )
    key_sql = composite_key_sql(sync.key_columns, columns)
    fields = Fields(zone=sync.timezone, kept=kept_constants(sync, last, "attributes"))
    identifiers, ident, checks = identifier_sql(sync, columns, fields)
    if sync.effective_mode == "update":
        # a flag, not an attribute: not counted among the attributes set
        fields.present[len(fields.fragments)] = "false"
        fields.fragments.append("'\"_update\":true'")
    email_col = sync.identify_by.get("email")
    email_spec = sync.attributes.get("email")
    if email_col and email_spec is None:
        _identify_email(fields, "skip")
    for name, spec in sync.attributes.items():
        if name == "email" and email_col and reads_identify_email(spec, email_col):
            # the identify_by email again: sent as the identifier is, trimmed (the loader
            # refuses an `email` attribute of any other column)
            _identify_email(fields, spec.on_null or sync.on_null or default_on_null, spec)
            continue
        fields.add(sync.name, name, spec, columns, sync.on_null or default_on_null)
    _clear_removed(fields, clear)
    _check_count(sync, fields, clear)
    checks.extend(fields.checks)
    used.extend(fields.columns)
    extra_columns = ""
    sent_ident = ident  # what names a row whose key is null: without `on_change`'s `_watch`
    if sync.on_change:
        ident, extra_columns = _on_change_sql(sync, columns, fields, ident, default_on_null, rezone)
    null_key = " or ".join(null_sql(k, columns[k]) for k in sync.key_columns)
    src_h = source_hash(sync, (*used, *sync.key_columns), columns, last)
    checks.insert(0, f"case when {null_key} then {lit('primary key is null')} end")
    checks[:0] = nan_checks((*used, *sync.key_columns), columns)
    op = (
        '\'{"type":"person","action":"identify","identifiers":\' || '
        f"{identifiers} || ',\"attributes\":' || {_object(fields.fragments)} || '}}'"
    )
    # the text of a null key spells out the identifiers' expressions rather than reading their
    # computed columns, in a `case` (which DuckDB evaluates only for the rows that reach it;
    # `coalesce` and a computed column cost every row): keying 1M rows took 0.36 s, now 0.19 s
    null_key_text = _inlined(sent_ident, fields.computed)
    fields.computed.append(("__k", key_sql))
    key = (
        'case when "__k" is null '
        f"then '(null key) ' || coalesce({null_key_text}, '') else \"__k\" end"
    )
    select = (
        f"select {key} as k, "
        f"{op} as op, {ident} as ident, coalesce({', '.join(checks)}) as reject, "
        f"{fields.n_set()} as n_set, {fields.n_cleared()} as n_cleared, "
        f"{fields.n_echo()} as n_echo{extra_columns}, "
        f"{_person_address(fields)} as addr, __rid, {src_h} as src_h from "
    )
    return fields.compiled(select, tuple(dict.fromkeys(used + sync.key_columns)), src_h, key)


def _identify_email(fields: Fields, policy: str, spec: FieldConfig | None = None) -> None:
    """The `email` attribute of a people sync identified by email: the identifier's text
    (trimmed, as the identify addresses the person), or the null ``policy`` of the `email`
    attribute ``spec`` that reads the same column when there is none."""
    email = q("__id_email")
    key = json_key("email")
    if policy == "clear":
        fields.cleared.append(f"{email} is null")
        null = f"{key} || '\"\"'"
    elif policy == "default" and spec is not None:
        null = f"{key} || {lit(orjson.dumps(spec.default).decode())}"
    else:
        null = "null"
    fields.present[len(fields.fragments)] = "true" if null != "null" else f"{email} is not null"
    # the identifier's own text (not a clear nor a default standing for a null email)
    fields.echo[len(fields.fragments)] = f"{email} is not null"
    fields.fragments.append(
        f"case when {email} is null then {null} else {key} || to_json({email}) end"
    )


def _inlined(sql: str, computed: list[tuple[str, str]]) -> str:
    """``sql`` with each reference to a computed column replaced by its expression."""
    for alias, expression in computed:
        sql = sql.replace(q(alias), f"({expression})")
    return sql


def _person_address(fields: Fields) -> str:
    """SQL naming the person a row is sent to as Customer.io finds it: its `id`, else its
    `cio_id`, else its email in lower case (Customer.io matches emails in any case)."""
    present = {alias for alias, _ in fields.computed}
    parts = [
        f"'{kind}:' || " + (f'lower("__id_{kind}")' if kind == "email" else f'"__id_{kind}"')
        for kind in IDENTIFIER_PRIORITY
        if f"__id_{kind}" in present
    ]
    return f"coalesce({', '.join(parts)})" if parts else "null::varchar"


def _on_change_sql(
    sync: SyncConfig,
    columns: dict[str, str],
    fields: Fields,
    ident: str,
    default_on_null: str,
    rezone: Rezoned | None = None,
) -> tuple[str, str]:
    """For `on_change`: the ident JSON extended with the watched values (``_watch``), and the
    per-rule columns ``__ocp_<i>`` (event properties JSON), ``__ocr_<i>`` (the reject reason
    of a property the event cannot carry, or null) and ``__ocu_<i>`` (unless); with
    ``rezone``, ``__ocw_<i>`` too: the watched value as read in the last run's zone, as JSON
    text (for the rules of :attr:`Rezoned.attributes`).

    A watched value is the attribute's, whose own checks reject its row (the reject reasons
    :func:`coerce` gives here are those). A property's are not the row's: a row whose
    properties only a rule that does not fire reads is sent as it is; the diff rejects the row
    of a transition whose event would carry one (``diff._reject_unsendable_events``), rather than
    sending the event without it and moving the snapshot past the transition. So it does the
    row of an event over 32 KB as sent, whose identifiers (an objects sync's related person's)
    and timestamp are the diff's to know."""
    watched: dict[str, str] = {}
    was: dict[str, str] = {}
    for name, spec in sync.attributes.items():
        if spec.value is not None:
            watched[name] = lit(orjson.dumps(spec.value).decode()) + "::json"
            if rezone is not None and name in rezone.attributes:
                # the constant as the last run's zone read it (`Rezoned`)
                then = spec.in_time_zone(rezone.was).value
                was[name] = lit(orjson.dumps(then).decode()) + "::json"
            continue
        column = spec.column or name
        for zone, into in ((sync.timezone, watched), (rezone.was if rezone else None, was)):
            if into is was and (rezone is None or name not in rezone.attributes):
                continue
            # the reason is the attribute's own check (``fields``), which rejects the row: a
            # value it refuses is null here and fires nothing
            into[name], _ = coerce(
                sync.name,
                name,
                column,
                columns[column],
                spec.type,
                attribute=not column.startswith(GRAPH_ATTRIBUTE_PREFIX),
                zone=zone,
            )
    fragments = []
    for i, rule in enumerate(sync.on_change):
        if rule.attribute not in sync.attributes:
            raise ConfigError(
                f"sync `{sync.name}`: `on_change[{i}].attribute` watches `{rule.attribute}`, "
                "which is not one of the sync's attributes",
                hint=f"attributes: {', '.join(f'`{a}`' for a in sync.attributes)}",
            )
    for name in dict.fromkeys(rule.attribute for rule in sync.on_change):
        fragments.append(f"{json_key(name)} || coalesce(to_json({watched[name]})::varchar, 'null')")
    watch = "'{' || " + " || ',' || ".join(fragments) + " || '}'"
    ident = (
        f"case when {ident} = '{{}}' then '{{\"_watch\":' || {watch} || '}}' "
        f"else rtrim({ident}, '}}') || ',\"_watch\":' || {watch} || '}}' end"
    )
    extra = ""
    for i, rule in enumerate(sync.on_change):
        props = Fields(computed=fields.computed, limit_values=False, zone=sync.timezone)
        for name, spec in rule.properties.items():
            props.add(sync.name, name, spec, columns, default_on_null)
        unless = f"coalesce(({rule.unless}), false)" if rule.unless else "false"
        if rule.unless:
            _check_unless(sync.name, i, unless, columns)
        bad = f"coalesce({', '.join(props.checks)})" if props.checks else "null::varchar"
        extra += (
            f", {_object(props.fragments)} as __ocp_{i}, {bad} as __ocr_{i}, {unless} as __ocu_{i}"
        )
        if rule.attribute in was:
            extra += f", coalesce(to_json({was[rule.attribute]})::varchar, 'null') as __ocw_{i}"
    return ident, extra


def _key_text(column: str, col_type: str) -> str:
    """SQL for a column's text in an event key: one text per value whatever the column's type
    within its family, so a model whose key column changes type between runs (`timestamp` to
    `timestamptz`, `date` to `timestamp`, `integer` to `double` or `decimal`, which pass the
    type-drift guardrail) keeps its keys, and its delivered events are not sent again.

    A timestamp or date is its UTC instant (a naive one is UTC, as everywhere in Lockgate) with
    `+00`; a whole float or decimal is its integer's text, any other decimal its text without
    trailing zeros (`7.50` as `7.5`, a float's own text)."""
    c = q(column)
    if _is(col_type, ("JSON",)):
        # the JSON's text, as keys delivered before were; a JSON `null` or blank string is no
        # key (as a null or blank text is not): each such row was one event keyed `null`
        value = f"({_valid_json(c)}->>'$')"
        return (
            f"case when {_json_kind(c)} = 'NULL' or ({_json_kind(c)} = 'VARCHAR' "
            f"and {_trim(value)} = '') then null else {c}::varchar end"
        )
    if _is(col_type, ("TIMESTAMP", "DATE")):  # any precision, with or without a time zone
        utc = f"timezone('UTC', {c}::timestamptz)::varchar || '+00'"
        return f"case when isfinite({c}) then {utc} else {c}::varchar end"
    if _is(col_type, ("FLOAT", "DOUBLE")):
        return (
            f"case when isfinite({c}) and {c} = floor({c}) and abs({c}) < 1e38 "
            f"then {c}::hugeint::varchar else {c}::varchar end"
        )
    if _is(col_type, ("DECIMAL",)):
        return (
            f"case when {c} = floor({c}) then {c}::hugeint::varchar "
            f"else rtrim({c}::varchar, '0') end"
        )
    return f"{c}::varchar"


def _blank_or_null(column: str, col_type: str) -> str:
    """SQL true when ``column`` is null, or (a text, not a number, time or boolean, whose key
    text is never blank) empty or white space alone (:data:`IDENTIFIER_SPACE`)."""
    c = q(column)
    if _is(col_type, (*NUMERIC_TYPES, *TIMESTAMP_TYPES, "TIME", "BOOLEAN", "INTERVAL", "UUID")):
        return f"{c} is null"
    return f"coalesce({_trim(_key_text(column, col_type))} = '', true)"


#: how the key of an events row without an event id (rejected) starts: it names no event
NULL_ID_KEY = "(null id) "


def compile_events(
    sync: SyncConfig, columns: dict[str, str], now_epoch: int, *, history: bool = False
) -> Compiled:
    """The SELECT producing (k, op, ident, reject, ts, backfill, id_seed, sent_name,
    sent_ts) for an events sync: ``ts`` dates the dedupe id, ``sent_name`` and ``sent_ts``
    are the name (a backfill rename applied) and timestamp the event is sent with, as in
    ``op``, which the ledger keeps.
    ``history``: without `event.timestamp`, every event is backfill (see ``compile_sync``)."""
    assert sync.event is not None
    event = sync.event
    fields = Fields(limit_values=False, zone=sync.timezone)
    identifiers, ident, checks = identifier_sql(sync, columns, fields)
    used: list[str] = list(sync.identify_by.values())
    # the event key: a column or a hash of declared columns
    if event.id.column:
        if event.id.column not in columns:
            raise ConfigError(
                f"sync `{sync.name}`: event id column `{event.id.column}` is not in the model",
                hint=columns_hint(columns),
            )
        # an id of white space alone names no occurrence, as an empty one does (every such
        # row would be one event, the others counted as repeats); around an id it is kept,
        # so no key delivered before changes
        key_text = _key_text(event.id.column, columns[event.id.column])
        key_sql = f"case when {_trim(key_text)} <> '' then {key_text} end"
        null_id = lit(f"column `{event.id.column}`: event id is null, empty or blank")
        if _is(columns[event.id.column], ("FLOAT", "DOUBLE")):
            # NaN or an infinity names no occurrence: each such row was one event keyed `nan`,
            # the others counted as repeats and never sent
            c = q(event.id.column)
            key_sql = f"case when isfinite({c}) then {key_sql} end"
            null_id = (
                f"case when {c} is null then {null_id} else "
                f"{lit(f'column `{event.id.column}`: event id `')} || {c}::varchar || "
                f"{lit('` is not a finite number' + CAST_THE_ID)} end"
            )
        used.append(event.id.column)
    elif event.id.hash:
        for col in event.id.hash:
            if col not in columns:
                raise ConfigError(
                    f"sync `{sync.name}`: event id hash column `{col}` is not in the model",
                    hint=columns_hint(columns),
                )
        # each value as its length, `:` and its text, a null as `-`: no two lists of values
        # (`'a|b', 'c'` and `'a', 'b|c'`, a null and the text `-`) give the same key text
        parts = ", ".join(
            f"coalesce(strlen({_key_text(c, columns[c])})::varchar || ':' || "
            f"{_key_text(c, columns[c])}, '-')"
            for c in event.id.hash
        )
        # a row whose hash columns are all null names no occurrence: every such row would
        # share one key (and all but one count as repeats), so it is rejected as a null id;
        # so is one whose columns are all empty or white space alone (or those and null), as
        # a blank `event.id` column is. One blank among others that are not is a key as it is
        # (`'ab', ''`), and a number, a time or a boolean is never blank (`0` is a value)
        all_null = " and ".join(null_sql(c, columns[c]) for c in event.id.hash)
        all_blank = " and ".join(_blank_or_null(c, columns[c]) for c in event.id.hash)
        key_sql = f"case when not ({all_blank}) then md5(concat_ws(chr(31), {parts})) end"
        hash_cols = ", ".join(f"`{c}`" for c in event.id.hash)
        one = len(event.id.hash) == 1
        null_text = (
            f"event id is null: its `event.id.hash` column {hash_cols} is null"
            if one
            else f"event id is null: every `event.id.hash` column ({hash_cols}) is null"
        )
        blank_text = (
            f"event id is blank: its `event.id.hash` column {hash_cols} is empty or white "
            "space alone"
            if one
            else f"event id is blank: every `event.id.hash` column ({hash_cols}) is empty, "
            "white space alone or null"
        ) + (
            ", so such rows would all be one event; give each row a value that tells it "
            "apart (add a column to `event.id.hash`), or leave such rows out of the model"
        )
        null_id = f"case when {all_null} then {lit(null_text)} else {lit(blank_text)} end"
        used.extend(event.id.hash)
    else:
        raise ConfigError(f"sync `{sync.name}`: `event.id` needs `column` or `hash`")
    # name
    if event.name.value is not None:
        name_sql = lit(event.name.value.strip())
    elif event.name.column:
        if event.name.column not in columns:
            raise ConfigError(
                f"sync `{sync.name}`: event name column `{event.name.column}` is not in the model",
                hint=columns_hint(columns),
            )
        name_sql = _trim(f"{q(event.name.column)}::varchar")
        used.append(event.name.column)
    else:
        raise ConfigError(f"sync `{sync.name}`: `event.name` needs a column or `{{value: ...}}`")
    # timestamp
    if event.timestamp:
        if event.timestamp not in columns:
            raise ConfigError(
                f"sync `{sync.name}`: timestamp column `{event.timestamp}` is not in the model",
                hint=columns_hint(columns),
            )
        ts_type = columns[event.timestamp]
        ts_sql, ts_check = coerce(
            sync.name, "timestamp", event.timestamp, ts_type, "timestamp", zone=sync.timezone
        )
        if ts_check != "null":
            checks.append(ts_check)
        checks.append(
            f"case when {q(event.timestamp)} is null then "
            f"{lit(f'column `{event.timestamp}`: timestamp is null')} end"
        )
        if _is(columns[event.timestamp], NUMERIC_TYPES):
            # a number column is read as unix seconds: one of milliseconds (how JavaScript,
            # Kafka and many exports write time) is tens of thousands of years ahead, which
            # the check below would only call "in the future"
            checks.append(
                f"case when {ts_sql} >= {EPOCH_MS_FROM} then "
                f"{lit(f'column `{event.timestamp}`: timestamp ')} || {ts_sql} || "
                f"{lit(' is not unix seconds (it would be past the year 5000): it looks like ')}"
                f" || {lit('milliseconds; divide it in the model, e.g. `')} || "
                f"{lit(f'{event.timestamp} // 1000 as {event.timestamp}`')} end"
            )
        skew = FUTURE_TOLERANCE_SECONDS // 60
        # a local time read as UTC is hours ahead in every zone east of it: say so
        read_as = (
            f"; `{event.timestamp}` has no time zone and is read as UTC: set `timezone:` if it "
            "holds local times"
            if sync.timezone is None and is_naive(ts_type)
            else ""
        )
        checks.append(
            f"case when {ts_sql} > {now_epoch + FUTURE_TOLERANCE_SECONDS} then "
            f"{lit(f'column `{event.timestamp}`: timestamp ')} || {_utc_text(ts_sql)} || "
            f"{lit(f' is in the future (now {_utc(now_epoch)}; up to {skew} minutes ahead ')} || "
            f"{lit(f'is taken for clock skew{read_as})')} end"
        )
        # before 1970 a unix second is negative: the API's timestamps are unix seconds and the
        # emulator refuses a negative one (saying "milliseconds?") on every run; rejected here
        # once, saying what is wrong
        checks.append(
            f"case when {ts_sql} < 0 then "
            f"{lit(f'column `{event.timestamp}`: timestamp ')} || {_utc_text(ts_sql)} || "
            f"{lit(' is before the unix epoch (Customer.io takes unix seconds, never negative)')}"
            " end"
        )
        used.append(event.timestamp)
    else:
        ts_sql = str(now_epoch)
    backfill_sql = f"({ts_sql} < {now_epoch - sync.backfill.max_age_seconds})"
    if history and not event.timestamp:
        backfill_sql = f"({ts_sql} is not null)"  # every event; `ts` stays in the SQL
    older = sync.backfill.older
    if isinstance(older, dict):
        # every `{name}` in the template is the event's name: `{name}_{name}` too
        renamed = f" || {name_sql} || ".join(lit(part) for part in older["rename"].split("{name}"))
        sent_name = f"case when {backfill_sql} then {renamed} else {name_sql} end"
    else:
        sent_name = name_sql
    for name, spec in sync.properties.items():
        fields.add(sync.name, name, spec, columns, sync.on_null)
    checks.extend(fields.checks)
    used.extend(fields.columns)
    fields.computed.append(("__ts", ts_sql))
    checks = [c.replace(ts_sql, '"__ts"') for c in checks]
    checks.insert(0, f"case when {key_sql} is null then {null_id} end")
    checks[:0] = nan_checks(used, columns)
    checks.append(f"case when coalesce({name_sql}, '') = '' then {lit('event name is blank')} end")
    checks.append(
        f"case when strlen(__name) > {MAX_EVENT_NAME_BYTES} then "
        f"{lit('event name `')} || {quoted('__name')} || {lit('` is ')} || strlen(__name) || "
        f"{lit(f' bytes, over the {MAX_EVENT_NAME_BYTES}-byte limit of Customer.io (UTF-8)')} end"
    )
    op = (
        '\'"type":"person","action":"event","identifiers":\' || '
        f"{identifiers} || ',\"name\":' || to_json(__name) || ',\"timestamp\":' || "
        "coalesce(__ts, 0) || ',\"attributes\":' || __props || '}'"
    )
    # Customer.io takes at most 32 KB per operation of a batch, which its 100,000-byte limit of
    # event data cannot reach: an event over it is never sent, so it is rejected here, with
    # its size, not counted as refused by Customer.io
    size = f"(strlen({op}) + {EVENT_ID_BYTES})"
    names = list(sync.properties)
    reason = oversize_event_reason(
        "event", size, "__props", names, fields.fragments, "leave them out"
    )
    checks.append(f"case when {size} > {MAX_OP_BYTES} then {reason} end")
    backfill = backfill_sql.replace(ts_sql, "__ts")
    middle = (
        f"(select *, {_object(fields.fragments)} as __props, "
        f"{sent_name.replace(ts_sql, '__ts')} as __name from {fields.inner_select()})"
    )
    # `ts` dates the dedupe id (deliver.event_ulids): without a timestamp column it must not
    # be the time of sending, or a re-run after a lost state or a crash sends a new id;
    # `id_seed` goes into the id's random part with the key: the event's name before any
    # backfill rename and the identifiers it is sent to (the person as Customer.io knows
    # them), so two events syncs whose keys meet in the same second keep apart, unless they
    # send the same name for the same person. Both come from the row alone: a re-send after
    # a crash or a lost state carries the same id.
    id_ts = "coalesce(__ts, 0)" if event.timestamp else "0"
    id_seed = f"coalesce({name_sql}, '') || chr(31) || coalesce({identifiers}, '')"
    select = (
        f"select coalesce({key_sql}, {lit(NULL_ID_KEY)} || coalesce({ident}, '')) as k, "
        f"{op} as op, {ident} as ident, coalesce({', '.join(checks)}) as reject, "
        f"{id_ts}::bigint as ts, coalesce({backfill}, false) as backfill, "
        f"{id_seed} as id_seed, __name as sent_name, coalesce(__ts, 0)::bigint as sent_ts, "
        f"__rid from {middle}"
    )
    return Compiled(select, tuple(dict.fromkeys(used)), computed=fields.computed_sql())


def _check_unless(sync: str, i: int, unless: str, columns: dict[str, str]) -> None:
    """Refuse an `on_change` rule's `unless` (``unless``, as the mapping reads it) that does
    not bind over the model's columns: it failed in the middle of the mapping's query, as
    "unexpected ParserException ... this is a bug in Lockgate". DuckDB binds it here over an
    empty row of the model's types; a model whose types it cannot rebuild is not judged."""
    import duckdb

    from lockgate.sources.base import db_message

    row = ", ".join(f"null::{kind} as {q(name)}" for name, kind in columns.items()) or "1"
    from lockgate.scratch import scratch

    with scratch() as con:
        try:
            con.execute(f"select {unless} from (select {row}) limit 0")
        except duckdb.Error as exc:
            try:
                con.execute(f"select true from (select {row}) limit 0")
            except duckdb.Error:
                return
            expression = unless.removeprefix("coalesce((").removesuffix("), false)")
            # DuckDB's `LINE 1: ...` quotes the probe above, not the rule as written
            said = db_message(exc).split(" LINE ", 1)[0]
            raise ConfigError(
                f"sync `{sync}`: `on_change[{i}].unless` (`{expression}`) is not a condition "
                f"over the model's columns: {said}",
                hint="write SQL over the model's columns that is true or false (e.g. "
                "`plan_before = 'trial'`); a lookup in another table belongs in the model's SQL, "
                f"as a column; {columns_hint(columns)}",
            ) from None


def oversize_event_reason(
    event: str, size: str, props: str, names: list[str], fragments: list[str], leave_out: str
) -> str:
    """SQL for the reason an event over Customer.io's 32 KB per operation is rejected: ``event``
    (how the reason names it) is ``size`` bytes as sent, ``props`` (its properties' JSON)
    so many, the largest of the properties ``names`` (their JSON ``fragments``), and what to
    do: trim them in the model or ``leave_out`` (``leave them out``, or where from)."""
    over = f" bytes as sent, over the {MAX_OP_BYTES}-byte limit of Customer.io per operation ("
    advice = f"); trim large properties in the model or {leave_out}"
    return (
        f"{lit(event + ' is ')} || {size} || {lit(over)} || strlen({props}) || "
        f"{lit(' bytes of properties')} || {_largest(names, fragments)} || {lit(advice)}"
    )


def _largest(names: list[str], fragments: list[str], shown: int = 3) -> str:
    """SQL for text naming the largest of the fields ``names`` (whose JSON ``fragments`` they
    are), such as ``, the largest `notes` 40012 bytes, `body` 9800 bytes``: up to ``shown`` of
    those over 1,000 bytes, or the largest one when none is, so the reason says which columns
    to trim."""
    if not names:
        return "''"
    sizes = ", ".join(
        f"{{'b': coalesce(strlen({fragment}), 0), 'n': {lit(name)}}}"
        for name, fragment in zip(names, fragments, strict=True)
    )
    ranked = f"list_sort([{sizes}], 'DESC')"
    large = f"list_filter({ranked}, lambda f: f.b >= 1000)[1:{shown}]"
    largest = f"case when len({large}) > 0 then {large} else {ranked}[1:1] end"
    listed = f"list_transform({largest}, lambda f: '`' || f.n || '` ' || f.b || ' bytes')"
    return f"', the largest ' || array_to_string({listed}, ', ')"


MAX_OBJECT_ID_BYTES = 150
MAX_OBJECT_ATTRIBUTES_BYTES = 100_000


def _require(sync: SyncConfig, column: str, what: str, columns: dict[str, str]) -> None:
    if column not in columns:
        raise ConfigError(
            f"sync `{sync.name}`: {what} column `{column}` is not in the model",
            hint=columns_hint(columns),
        )


def _object_id_checks(column: str, col_type: str, fix: str = "") -> list[str]:
    """The reject checks of an object id (``__obj``, the column's trimmed text or null), the
    same in an objects sync and in a relationships sync of the type: a relationship whose
    object could never be sent is refused at mapping with the reason its objects sync gives,
    not held for an object that never comes, nor sent for Customer.io to refuse every run.
    ``fix`` ends the reason of an id null, empty or only white space."""
    c = q(column)
    too_long = lit(
        f" bytes, over the {MAX_OBJECT_ID_BYTES}-byte limit of Customer.io; shorten it in the "
        "model, the same way in the objects sync and the relationships syncs of its type"
    )
    text = f"({_valid_json(c)}->>'$')" if _is(col_type, ("JSON",)) else f"{c}::varchar"
    return [
        *_id_checks(column, col_type, "object id", "__obj"),
        f"case when {null_sql(column, col_type)} then "
        f"{lit(f'column `{column}`: object id is null{fix}')} "
        f"when __obj is null and {text} = '' then "
        f"{lit(f'column `{column}`: object id is empty{fix}')} "
        f"when __obj is null then "
        f"{lit(f'column `{column}`: object id is only white space{fix}')} "
        "end",
        f"case when strlen(__obj) > {MAX_OBJECT_ID_BYTES} then "
        f"{lit(f'column `{column}`: object id is ')} || strlen(__obj) || {too_long} end",
    ]


def _object_key(column: str) -> str:
    """SQL for the key a row's object id gives in reports when it has no valid one: a rejected
    id (`7.5` in a double column) keeps its own text, else it says null or empty."""
    c = q(column)
    return (
        f"coalesce(__obj, case when {c} is null then '(null object id)' "
        f"when {_trim(f'{c}::varchar')} = '' then '(empty object id)' else {c}::varchar end)"
    )


def compile_objects(
    sync: SyncConfig,
    columns: dict[str, str],
    default_on_null: str,
    clear: tuple[str, ...] = (),
    last: LastHash | None = None,
    rezone: Rezoned | None = None,
) -> Compiled:
    """The SELECT producing (k, op, ident, reject, n_set, n_cleared, n_echo) for an objects
    sync.

    ``k`` is the object id; ``ident`` the object's Track identifiers
    (``{"object_type_id": "1", "object_id": "acme"}``).
    """
    assert sync.object_type_id is not None
    key_column = sync.key_columns[0]
    _require(sync, key_column, "object id (`primary_key`)", columns)
    _one_value(sync.name, "object id (`primary_key`)", key_column, columns[key_column])
    fields = Fields(zone=sync.timezone, kept=kept_constants(sync, last, "attributes"))
    fields.computed.append(
        ("__obj", f"nullif({_trim(_id_text(key_column, columns[key_column]))}, '')")
    )
    for name, spec in sync.attributes.items():
        fields.add(sync.name, name, spec, columns, sync.on_null or default_on_null)
    _clear_removed(fields, clear)
    _check_count(sync, fields, clear)
    attributes = _object(fields.fragments)
    type_id = orjson.dumps(sync.object_type_id).decode()
    ident = f"'{{\"object_type_id\":{type_id},\"object_id\":' || to_json(__obj) || '}}'"
    checks = [
        *nan_checks((key_column, *fields.columns), columns),
        *_object_id_checks(key_column, columns[key_column]),
        *fields.checks,
        f"case when strlen({attributes}) > {MAX_OBJECT_ATTRIBUTES_BYTES} then "
        f"{lit(f'attributes are over {MAX_OBJECT_ATTRIBUTES_BYTES} bytes in total')} end",
    ]
    op = (
        f'\'{{"type":"object","action":"identify","identifiers":\' || {ident} || '
        f"',\"attributes\":' || {attributes} || '}}'"
    )
    extra_columns = ""
    if sync.on_change:
        # the watched values ride in `ident` (removal ops rebuild identifiers from its keys)
        ident, extra_columns = _on_change_sql(sync, columns, fields, ident, default_on_null, rezone)
    src_h = source_hash(sync, (key_column, *fields.columns), columns, last)
    key = _object_key(key_column)
    select = (
        f"select {key} as k, {op} as op, {ident} as ident, "
        f"coalesce({', '.join(checks)}) as reject, "
        f"{fields.n_set()} as n_set, {fields.n_cleared()} as n_cleared, "
        f"{fields.n_echo()} as n_echo{extra_columns}, __rid, {src_h} as src_h from "
    )
    return fields.compiled(select, (key_column, *fields.columns), src_h, key)


def compile_relationships(
    sync: SyncConfig, columns: dict[str, str], default_on_null: str, last: LastHash | None = None
) -> Compiled:
    """The SELECT producing (k, op, ident, reject, n_set, n_cleared, n_echo, person, object_id)
    for a relationships sync: one person-side `add_relationships` per person-object pair
    (``n_echo``: :meth:`Fields.n_echo`).

    ``ident`` holds the person's identifiers and the object's, so a relationship that leaves
    the model can be deleted; ``person`` is the identifiers object used (``{"id": "42"}``).
    """
    assert sync.object_type_id is not None and sync.object_id is not None
    _require(sync, sync.object_id, "object id (`object_id`)", columns)
    _one_value(sync.name, "object id (`object_id`)", sync.object_id, columns[sync.object_id])
    fields = Fields(zone=sync.timezone, kept=kept_constants(sync, last, "relationship_attributes"))
    identifiers, _, checks = identifier_sql(sync, columns, fields)
    obj_type = columns[sync.object_id]
    fields.computed.append(("__obj", f"nullif({_trim(_id_text(sync.object_id, obj_type))}, '')"))
    for name, spec in sync.relationship_attributes.items():
        fields.add(sync.name, name, spec, columns, sync.on_null or default_on_null)
    type_id = orjson.dumps(sync.object_type_id).decode()
    obj = f"'{{\"object_type_id\":{type_id},\"object_id\":' || to_json(__obj) || '}}'"
    ident = f"'{{\"person\":' || {identifiers} || ',\"object\":' || {obj} || '}}'"
    # a row with a person and no object (its id null, blank or no whole number): its key
    # (person and object) is not the relationship it may have delivered, which is kept
    # meanwhile (`diff.REJECTED_OBJECTLESS`); say so, and what to do
    checks += [
        f"{check} || case when __obj is null then {lit(RELATIONSHIP_KEPT_OF_PERSON)} else '' end"
        for check in _object_id_checks(
            sync.object_id, obj_type, "; fix it in the model or at the source"
        )
    ]
    checks += fields.checks
    rel_attrs = _object(fields.fragments)
    if fields.fragments:  # Customer.io's total for an object's (and a relationship's) attributes
        checks.append(
            f"case when strlen({rel_attrs}) > {MAX_OBJECT_ATTRIBUTES_BYTES} then "
            f"{lit(f'relationship attributes are over {MAX_OBJECT_ATTRIBUTES_BYTES} bytes')} end"
        )
    op = (
        f'\'{{"type":"person","action":"add_relationships","identifiers":\' || '
        f'{identifiers} || \',"cio_relationships":[{{"identifiers":\' || {obj} || '
        f"',\"relationship_attributes\":' || {rel_attrs} || '}}]}}'"
    )
    if "anonymous_id" in sync.identify_by:
        # a person known only by an anonymous id: Customer.io's object-side shape
        # (`identify_anonymous`), carried over to the person when they identify
        anonymous_op = (
            f'\'{{"type":"object","action":"identify_anonymous","identifiers":\' || {obj} || '
            f'\',"cio_relationships":[{{"identifiers":\' || {identifiers} || '
            f"',\"relationship_attributes\":' || {rel_attrs} || '}}]}}'"
        )
        anonymous = f"starts_with({identifiers}, '{{\"anonymous_id\"')"
        op = f"case when {anonymous} then {anonymous_op} else {op} end"
    used = (*sync.identify_by.values(), sync.object_id, *fields.columns)
    checks[:0] = nan_checks(used, columns)
    src_h = source_hash(sync, used, columns, last)
    key = f"coalesce({identifiers}, '(no person)') || ' ' || {_object_key(sync.object_id)}"
    select = (
        f"select {key} as k, "
        f"{op} as op, {ident} as ident, coalesce({', '.join(checks)}) as reject, "
        f"{fields.n_set()} as n_set, {fields.n_cleared()} as n_cleared, "
        f"{fields.n_echo()} as n_echo, {identifiers} as person, __obj as object_id, __rid, "
        f"{src_h} as src_h from "
    )
    return fields.compiled(select, used, src_h, key)
