"""Normalise, block and validate identifier values, a whole Arrow column at a time.

Every step works on a `pyarrow.StringArray` and returns one of the same length; a dropped
value becomes null and its reason is recorded. Steps that Arrow cannot vectorise (IDNA, E.164)
run in Python on the distinct non-ASCII / phone values only.

Example::

    clean = normalize_column(config, "email", pa.array([" Jane@X.com ", "null"]))
    clean.values.to_pylist()   # ["jane@x.com", None]
    clean.reasons.to_pylist()  # [None, "blocked"]
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from lockgate.project.identity import (
    EMAIL_MAX_CHARS,
    EMAIL_SHAPE,
    IDENTIFIER_SPACE,
    IdentityConfig,
    RegexValidateConfig,
)

_UUID = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
#: `validate: email_shape`: the rule a sync checks an email that addresses a row by, so the
#: graph keeps no email the sync would reject (`project/identity.py`), and at most
#: :data:`~lockgate.project.identity.EMAIL_MAX_CHARS` characters
_EMAIL_SHAPE = EMAIL_SHAPE
_E164 = r"^\+[1-9][0-9]{6,14}$"

# Calling codes and national number lengths for the simple phone normaliser. Numbers written
# with `+` or `00` work for every country; these only cover numbers written without one.
CALLING_CODES: dict[str, tuple[str, tuple[int, ...]]] = {
    "US": ("1", (10,)),
    "CA": ("1", (10,)),
    "GB": ("44", (10,)),
    "DE": ("49", (10, 11)),
    "FR": ("33", (9,)),
    "ES": ("34", (9,)),
    "IT": ("39", (9, 10)),
    "NL": ("31", (9,)),
    "AU": ("61", (9,)),
    "IN": ("91", (10,)),
    "BR": ("55", (10, 11)),
}


@dataclass(frozen=True)
class NormalizedColumn:
    """A normalised column: `values` (null where dropped) and `reasons` (null where kept).

    A reason is `blocked` or `invalid`; a value that was null on input has no reason.
    """

    values: pa.StringArray
    reasons: pa.StringArray
    normalized: pa.StringArray


MAX_EXACT_FLOAT = 2**53
"""Largest magnitude up to which every whole number is exact in a float (the sync's bound)."""


def _plain(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def to_string_array(column: pa.Array | pa.ChunkedArray) -> pa.StringArray:
    """Any Arrow column as identifier text.

    A number becomes its integer's text, as the sync sends it (`sync/mapping.py`): `7`, `7.0`
    and `7.00` are all `7`. A float or decimal that is not a whole number, NaN, an infinity
    or a float beyond 2^53 (no longer exact) has no identifier text: it becomes null, and
    :func:`normalize_column` drops it as `invalid`. Vectorised: no Python per value.
    """
    column = _plain(column)
    kind = column.type
    if pa.types.is_floating(kind):
        whole = pc.and_(
            pc.equal(pc.floor(column), column),
            pc.less_equal(pc.abs(column), pa.scalar(float(MAX_EXACT_FLOAT), kind)),
        )
        kept = pc.if_else(whole, column, pa.scalar(None, kind))
        column = pc.cast(pc.cast(kept, pa.int64(), safe=False), pa.string())
    elif pa.types.is_decimal(kind) and kind.scale != 0:
        # as a scale-0 decimal, wide enough for a negative scale's zeros (always whole)
        digits = kind.precision - min(kind.scale, 0)
        target = pa.decimal128(digits, 0) if digits <= 38 else pa.decimal256(min(digits, 76), 0)
        if kind.scale > 0:
            if kind.bit_width < 128:  # Arrow rounds decimal32/64 only through decimal128
                column = pc.cast(column, pa.decimal128(kind.precision, kind.scale))
                kind = column.type
            whole = pc.equal(pc.trunc(column), column)
            column = pc.if_else(whole, column, pa.scalar(None, kind))
        column = pc.cast(pc.cast(column, target, safe=False), pa.string())
    if pa.types.is_large_string(column.type) or not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    return column


def _unique_map(values: pa.StringArray, mask: pa.Array, fn: object) -> pa.StringArray:
    """Apply a Python function to the distinct values where `mask` holds; keep the rest."""
    assert callable(fn)
    picked = pc.filter(values, mask)
    if len(picked) == 0:
        return values
    uniques = pc.unique(picked)
    mapped = pa.array([fn(v) for v in uniques.to_pylist()], type=pa.string())
    index = pc.index_in(values, value_set=uniques)
    replaced = pc.take(mapped, index)
    return pc.if_else(mask, replaced, values)


def _idna(value: str | None) -> str | None:
    if value is None or "@" not in value:
        return value
    local, _, domain = value.rpartition("@")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return value
    return f"{local}@{domain}"


def e164(value: str | None, region: str = "US") -> str | None:
    """A simple E.164 normaliser (no `phonenumbers` dependency); `None` when it cannot tell.

    `+` or `00` prefixed numbers keep their country code; national numbers get the region's
    calling code when their digit count fits (a leading trunk `0` is dropped first).
    """
    if value is None:
        return None
    text = value.strip()
    digits = re.sub(r"\D", "", text)
    if not digits:
        return None
    if text.startswith("+"):
        out = "+" + digits
    elif digits.startswith("00"):
        out = "+" + digits[2:]
    else:
        code, lengths = CALLING_CODES.get(region.upper(), ("", ()))
        national = digits[1:] if digits.startswith("0") and len(digits) - 1 in lengths else digits
        if len(national) in lengths:
            out = "+" + code + national
        elif code and digits.startswith(code) and len(digits) - len(code) in lengths:
            out = "+" + digits
        else:
            return None
    return out if re.match(_E164, out) else None


def _where(
    values: pa.StringArray, mask: pa.Array, fn: Callable[[pa.StringArray], pa.StringArray]
) -> pa.StringArray:
    """`fn(values)` where `mask` holds; skipped entirely when it holds nowhere (the usual case)."""
    mask = pc.fill_null(mask, False)
    if not pc.any(mask).as_py():
        return values
    return pc.if_else(mask, fn(values), values)


def apply_steps(
    values: pa.StringArray, steps: tuple[str, ...], *, region: str = "US"
) -> pa.StringArray:
    """Apply normalisation steps in order."""
    for step in steps:
        if step == "trim":
            values = pc.utf8_trim_whitespace(values)
        elif step == "trim_unicode_space":
            values = pc.utf8_trim(values, characters=IDENTIFIER_SPACE)
        elif step == "strip_mailto":
            values = _where(
                values,
                pc.match_substring(values, "mailto:", ignore_case=True),
                lambda v: pc.replace_substring_regex(v, r"(?i)^mailto:", ""),
            )
            values = _where(
                values,
                pc.match_substring(values, "<"),
                lambda v: pc.replace_substring_regex(v, r"^[^<]*<([^<>]*)>\s*$", r"\1"),
            )
        elif step == "nfc":
            values = pc.utf8_normalize(values, form="NFC")
        elif step == "lowercase":
            values = pc.utf8_lower(values)
        elif step == "lowercase_if_uuid":
            values = _where(
                values,
                pc.equal(pc.utf8_length(values), 36),
                lambda v: pc.if_else(pc.match_substring_regex(v, _UUID), pc.utf8_lower(v), v),
            )
        elif step == "idna_domain":
            values = _where(
                values,
                pc.ends_with(values, "."),
                lambda v: pc.replace_substring_regex(v, r"\.$", ""),
            )
            non_ascii = pc.fill_null(pc.invert(pc.string_is_ascii(values)), False)
            values = _unique_map(values, non_ascii, _idna)
        elif step == "coerce_numeric_string":
            values = _where(
                values,
                pc.match_substring(values, "."),
                lambda v: pc.replace_substring_regex(v, r"^(-?[0-9]+)\.0+$", r"\1"),
            )
        elif step == "e164":
            present = pc.is_valid(values)
            values = _unique_map(values, present, lambda v: e164(v, region))
        elif step == "digits_only":
            values = pc.replace_substring_regex(values, r"[^0-9]", "")
        elif step == "strip_plus_tag":
            values = pc.replace_substring_regex(values, r"\+[^@]*@", "@")
        else:  # pragma: no cover - the config model only allows the steps above
            raise ValueError(step)
    return values


def normalize_column(
    config: IdentityConfig,
    type_name: str,
    column: pa.Array | pa.ChunkedArray,
    *,
    extra_blocked: frozenset[str] = frozenset(),
) -> NormalizedColumn:
    """Normalise, block and validate one column of values of type `type_name`.

    `extra_blocked` holds further (normalised) values to block, from the operator's table.
    A number that is no identifier (a fraction, NaN, a float beyond 2^53; see
    :func:`to_string_array`) is dropped as `invalid`.
    """
    column = _plain(column)
    raw = to_string_array(column)
    clean = _normalize_text(config, type_name, raw, extra_blocked)
    if pa.types.is_floating(column.type) or pa.types.is_decimal(column.type):
        no_text = pc.and_(pc.is_valid(column), pc.is_null(raw))
        if pc.any(no_text).as_py():
            reasons = pc.if_else(no_text, pa.scalar("invalid"), clean.reasons)
            return NormalizedColumn(clean.values, reasons, clean.normalized)
    return clean


def _normalize_text(
    config: IdentityConfig, type_name: str, raw: pa.StringArray, extra_blocked: frozenset[str]
) -> NormalizedColumn:
    if len(raw) > 50_000:
        # repeated values (a user id on many identify rows) are normalised once
        encoded = raw.dictionary_encode()
        if len(encoded.dictionary) < 0.6 * len(raw):
            once = _normalize_text(config, type_name, encoded.dictionary, extra_blocked)
            return NormalizedColumn(
                values=once.values.take(encoded.indices),
                reasons=once.reasons.take(encoded.indices),
                normalized=once.normalized.take(encoded.indices),
            )
    spec = config.identifier_types[type_name]
    values = apply_steps(raw, config.normalize_steps(type_name), region=spec.default_region)
    blocked, invalid = check_values(config, type_name, values, extra_blocked=extra_blocked)
    present = pc.is_valid(values)
    # a value that normalisation turned into null (for example an unparseable phone) is invalid
    lost = pc.and_(pc.is_valid(raw), pc.invert(present))
    reasons = pc.if_else(
        pc.and_(present, blocked),
        pa.scalar("blocked"),
        pc.if_else(
            pc.or_(pc.and_(present, invalid), lost),
            pa.scalar("invalid"),
            pa.scalar(None, pa.string()),
        ),
    )
    keep = pc.and_(present, pc.invert(pc.or_(blocked, invalid)))
    if spec.namespace:
        values = pc.binary_join_element_wise(pa.scalar(spec.namespace), values, ":")
    kept = pc.if_else(keep, values, pa.scalar(None, pa.string()))
    return NormalizedColumn(values=kept, reasons=reasons, normalized=values)


def operator_blocked(
    config: IdentityConfig, blocklist: pa.Table | None
) -> dict[str, frozenset[str]]:
    """The operator's `blocked_values_table` rows as each type's normalised values to block.

    A row's value goes through its type's normalisation steps, as the sources' values do, so
    `email, Shared@Corp.com` blocks `shared@corp.com`; a namespaced type's value may be
    written with its `namespace:` prefix (as the graph's tables and `tombstone` show it) or
    without. An `id_type` of `*` (or null) blocks the value for every type; a row of a type
    the config does not declare blocks nothing.
    """
    types = config.type_order
    raw: dict[str, list[str]] = {t: [] for t in types}
    if blocklist is not None and blocklist.num_rows:
        for id_type, value in zip(
            blocklist["id_type"].to_pylist(), blocklist["id_value"].to_pylist(), strict=True
        ):
            for t in types if id_type in ("*", None) else [id_type]:
                if t in raw and value is not None:
                    raw[t].append(str(value))
    out: dict[str, frozenset[str]] = {}
    for type_name, values in raw.items():
        spec = config.identifier_types[type_name]
        if spec.namespace:
            prefix = spec.namespace + ":"
            values = [v.removeprefix(prefix) for v in values]
        clean = apply_steps(
            pa.array(values, pa.string()),
            config.normalize_steps(type_name),
            region=spec.default_region,
        )
        out[type_name] = frozenset(v for v in clean.to_pylist() if v is not None)
    return out


def check_values(
    config: IdentityConfig,
    type_name: str,
    values: pa.StringArray,
    *,
    extra_blocked: frozenset[str] = frozenset(),
) -> tuple[pa.BooleanArray, pa.BooleanArray]:
    """Which normalised values are blocked, and which (not blocked) fail validation."""
    spec = config.identifier_types[type_name]
    rules = config.blocked_for(type_name)
    # both sides lower-cased by the same function: `exact_ci: [TBD]` blocks `tbd` and `TBD`
    lowered = pc.utf8_lower(values)
    listed = pc.utf8_lower(pa.array(list(rules.exact_ci), pa.string()))
    blocked = pc.is_in(lowered, value_set=listed)
    blocked = pc.fill_null(blocked, False)
    exact = list(rules.exact) + sorted(extra_blocked)
    if exact:
        hit = pc.is_in(values, value_set=pa.array(exact, pa.string()))
        blocked = pc.or_(blocked, pc.fill_null(hit, False))
    if rules.regex:
        # one pass over the strings with every pattern as an alternative
        combined = "|".join(f"(?:{regex})" for regex in rules.regex)
        hit = pc.fill_null(pc.match_substring_regex(values, combined), False)
        blocked = pc.or_(blocked, hit)
    validator = spec.validator
    pattern: str | None = None
    if validator == "email_shape":
        pattern = _EMAIL_SHAPE
    elif validator == "e164":
        pattern = _E164
    elif isinstance(validator, RegexValidateConfig):
        pattern = validator.regex
    if pattern is None:
        invalid = pc.fill_null(pc.and_(pc.is_valid(values), pa.scalar(False)), False)
    else:
        ok = pc.fill_null(pc.match_substring_regex(values, pattern), True)
        if validator == "email_shape":
            short = pc.less_equal(pc.utf8_length(values), EMAIL_MAX_CHARS)
            ok = pc.and_(ok, pc.fill_null(short, True))
        invalid = pc.and_(pc.invert(ok), pc.invert(blocked))
    return blocked, invalid


def normalize_value(config: IdentityConfig, type_name: str, value: object) -> str | None:
    """Normalise one value (for `explain` and the per-row resolver); `None` if dropped.

    A float or `Decimal` gets a number's identifier text (`7.0` is `7`), as in a column.
    """
    if value is None:
        return None
    if isinstance(value, Decimal) and not value.is_finite():
        return None
    column = (
        pa.array([value])
        if isinstance(value, float | Decimal)
        else pa.array([str(value)], pa.string())
    )
    out = normalize_column(config, type_name, column).values[0]
    result: str | None = out.as_py()
    return result
