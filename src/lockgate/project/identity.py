"""The `identity:` section of `lockgate.yml`: identifier types, blocklists, sources, rules.

These pydantic models only validate the project file. The engine in
:mod:`lockgate.identity` reads them once and works on Arrow tables from there on.

Example::

    config = IdentityConfig.model_validate(
        {
            "identifier_types": {
                "user_id": {"priority": 1, "limit": 1, "customerio": "id"},
                "email": {"priority": 2, "limit": 5, "customerio": "email"},
            },
            "sources": [{"name": "app_users", "table": "app.users", "mode": "snapshot"}],
        }
    )
    config.type_order  # ("user_id", "email")
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

NormalizeStep = Literal[
    "trim",
    "trim_unicode_space",
    "strip_mailto",
    "nfc",
    "lowercase",
    "lowercase_if_uuid",
    "idna_domain",
    "coerce_numeric_string",
    "e164",
    "digits_only",
    "strip_plus_tag",
]
DegreePolicy = Literal["quarantine", "keep_latest", "keep_first"]
_CIO_TARGET = re.compile(r"^(id|email|cio_id|anonymous_id|phone|none|attribute:[A-Za-z_][\w.]*)$")

#: what is taken off both ends of an identifier's text, by a sync (`sync/mapping.py`) and by the
#: graph's `trim_unicode_space`: every character Unicode counts as white space (spaces, tabs,
#: CR, LF, no-break and wide spaces, line and paragraph separators: Python's `str.isspace`, which
#: the graph's `trim` also takes off) and the zero-width spaces and byte-order mark that copies
#: out of spreadsheets and web forms leave behind
IDENTIFIER_SPACE = (
    " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u200b\u200c\u200d\u2028\u2029\u202f\u205f\u3000\ufeff"
)

#: the characters no email address Lockgate sends (or the graph keeps) holds: white space and
#: control characters (every one of :data:`IDENTIFIER_SPACE`, the C0 and C1 controls but NUL,
#: DEL), and `,` `;` `:` `<` `>`, which only a list of addresses (`a@x.com, b@y.com`), a name
#: with one (`Jane <jane@x.com>`) or a link (`mailto:jane@x.com`) holds outside quotes. Written
#: as the characters themselves, not escapes: the graph's pushed-down SQL runs the same pattern
#: on Postgres, Snowflake and BigQuery, whose regular expressions escape differently.
EMAIL_FORBIDDEN = "".join(
    sorted(
        set(IDENTIFIER_SPACE) | {chr(c) for c in (*range(1, 32), *range(0x7F, 0xA0))} | set(",;:<>")
    )
)

#: an email address as Lockgate takes one, checked by a sync on an email that addresses a row
#: and by the graph's `validate: email_shape`: one `@`, something before it, a domain of two or
#: more dot-separated labels none of them empty (no `jane@x`, `jane@x..com`, `jane@x.com.`), and
#: none of :data:`EMAIL_FORBIDDEN`. Anything else is taken: `+` tags, subdomains, quotes without
#: a space, non-ASCII names and domains (`jöhn@bücher.de`). One regular expression, so a 1M-row
#: first run pays one pass over each email (RE2: DuckDB, Arrow and BigQuery; also Postgres and
#: Snowflake, which read it the same).
EMAIL_SHAPE = f"^[^@{EMAIL_FORBIDDEN}]+@[^@.{EMAIL_FORBIDDEN}]+([.][^@.{EMAIL_FORBIDDEN}]+)+$"

#: the longest email address taken, in characters: RFC 5321's 254 (a path of 256 with its `<>`)
EMAIL_MAX_CHARS = 254

DEFAULT_NORMALIZE: dict[str, tuple[NormalizeStep, ...]] = {
    "email": ("trim_unicode_space", "strip_mailto", "nfc", "lowercase", "idna_domain"),
    "user_id": ("trim", "coerce_numeric_string"),
    "anonymous_id": ("trim", "lowercase_if_uuid"),
    "phone": ("trim", "e164"),
}
"""Normalisation applied when a type does not list its own steps (keyed by type name)."""

DEFAULT_BLOCKED_ALL_TYPES: tuple[str, ...] = (
    "",
    "null",
    "nil",
    "none",
    "undefined",
    "nan",
    "n/a",
    "na",
    "unknown",
    "anonymous",
    "guest",
    "test",
    "-",
    "0",
    "-1",
    "[object object]",
    "(not set)",
    "not set",
    "true",
    "false",
    # hashes of the empty string, for hashed identifiers
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "d41d8cd98f00b204e9800998ecf8427e",
    "da39a3ee5e6b4b0d3255bfef95601890afd80709",
)
"""Values blocked for every type (compared case-insensitively) unless `default_blocklist: false`."""

DEFAULT_BLOCKED_REGEX_ALL_TYPES: tuple[str, ...] = (r"^[0\-]*$", r"^\s*$")
"""Regexes blocked for every type: only zeros and dashes (Segment's default), blanks."""

DEFAULT_BLOCKED_BY_TYPE: dict[str, tuple[str, ...]] = {
    "email": (
        "test@example.com",
        "test@test.com",
        "email@email.com",
        "a@a.com",
        "user@domain.com",
        "noreply@",
        "no-reply@",
    ),
    "anonymous_id": ("00000000-0000-0000-0000-000000000000",),
}
DEFAULT_BLOCKED_REGEX_BY_TYPE: dict[str, tuple[str, ...]] = {
    "email": (r"@example\.(com|org|net)$",),
    "phone": (r"^\+?1?0{10}$", r"^\+?1?1234567890$"),
}


RE2_HINT = (
    "write it in RE2 syntax, the regexes Lockgate runs them with (Arrow's and DuckDB's): no "
    "lookarounds (`(?=`, `(?!`, `(?<=`), back-references (`\\1`) or possessive `++`; `\\z` "
    "for the end of the text, not `\\Z`; a literal `[`, `(` or `{` escaped as `\\[`; see "
    "docs/identity.md"
)


@functools.lru_cache(maxsize=256)
def _re2_error(pattern: str) -> str | None:
    """Why RE2 refuses ``pattern``, or `None`. Compiled by the engine that runs it (Arrow's
    `match_substring_regex`; DuckDB's `regexp_matches` is the same RE2) on one empty text, so a
    pattern Python accepts but RE2 does not (a lookahead) fails here, at load, and not in the
    middle of every sync. Arrow is only imported when the project has its own patterns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        pc.match_substring_regex(pa.array([""], pa.string()), pattern)
    except pa.ArrowInvalid as exc:
        return str(exc).removeprefix("Invalid regular expression: ")
    return None


def _re2(pattern: str) -> str:
    """``pattern``, when RE2 compiles it; else a config error saying why and what to write."""
    why = _re2_error(pattern)
    if why is not None:
        raise PydanticCustomError(
            "regex_syntax",
            "`{pattern}` is not a regular expression Lockgate can run: {why}",
            {"pattern": pattern, "why": why, "hint": RE2_HINT},
        )
    return pattern


RE2Pattern = Annotated[str, AfterValidator(_re2)]
"""A regular expression in RE2 syntax, checked when the config is loaded."""


class BaseConfig(BaseModel):
    """Every identity model: unknown keys fail loudly, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RegexValidateConfig(BaseConfig):
    """`validate: {regex: ...}`: a normalised value must match this regex (searched)."""

    regex: RE2Pattern
    """A regular expression (RE2 syntax); values that do not match are dropped and counted."""


class DegreeCapConfig(BaseConfig):
    """How many distinct neighbours of one type a single value may have before it is capped."""

    max: int = Field(ge=1)
    """Largest number of distinct neighbour values of that type this value may link to."""

    policy: DegreePolicy = "quarantine"
    """`quarantine`: the value links nobody (all its edges are set aside). `keep_latest` /
    `keep_first`: only the edge to the most recently (or first) seen neighbour is kept."""


class IdentifierTypeConfig(BaseConfig):
    """One identifier type, such as `user_id`, `email` or `anonymous_id`."""

    priority: int = Field(ge=0)
    """Lower is more trusted. Picks the star anchor of a row, the profile anchor, the survivor of a
    merge, and (with `customerio.id_from`) the Customer.io `id`. Ties are broken by type name."""

    limit: int | None = Field(default=5, ge=1)
    """Most distinct values of this type one profile may hold; `null` means no limit. A union that
    would break it is refused and logged in the refused-merges table."""

    normalize: tuple[NormalizeStep, ...] | None = None
    """Normalisation steps, in order. Default depends on the type name: `email` trims Unicode
    space, strips `mailto:`, NFC, lowercases and IDNA-encodes the domain; `user_id` trims and turns
    `123.0` into `123`; `anonymous_id` trims and lowercases UUIDs; `phone` goes to E.164; other
    types are trimmed."""

    validate_: Literal["email_shape", "e164"] | RegexValidateConfig | None = Field(
        default=None, alias="validate"
    )
    """`email_shape` (the rule a sync checks an email that addresses a row by: one `@`, a
    non-empty local part, a domain of two or more non-empty labels, no white space, control
    characters, `,` `;` `:` `<` `>`, at most 254 characters), `e164`, or `{regex: ...}`.
    Values failing validation are dropped before the graph and counted as `invalid`."""

    namespace: str | None = None
    """A prefix added to every value (`hubspot` gives `hubspot:123`), so ids from two instances of
    one system never collide."""

    default_region: str = "US"
    """Region for phone numbers written without a country code (`e164` step)."""

    degree_cap: dict[str, DegreeCapConfig] = Field(default_factory=dict)
    """Per neighbour type, how many distinct values of that type one value may link. Counted over
    all current edges at once, so the outcome never depends on row order."""

    bridge_known_profiles: bool = True
    """`false` for weak identifiers (devices, cookies): they may attach to one known profile but a
    union through them that would join two known profiles is refused."""

    limit_exempt_sources: tuple[str, ...] = ()
    """Sources whose edges ignore this type's `limit` (for example the app's users table, so a user
    who changes email six times stays one profile)."""

    customerio: str = "none"
    """What this type is in Customer.io: `id`, `email`, `cio_id`, `anonymous_id`, `phone`,
    `attribute:<name>` or `none`."""

    @property
    def validator(self) -> Literal["email_shape", "e164"] | RegexValidateConfig | None:
        """The `validate:` setting (named `validate_` in Python only to avoid a pydantic clash)."""
        return self.validate_

    @field_validator("validate_", mode="before")
    @classmethod
    def _validate_regex(cls, value: object) -> object:
        # checked before the union: a bad `{regex: ...}` would otherwise be reported as the
        # first member's error ("should be 'email_shape' or 'e164'")
        if isinstance(value, dict) and isinstance(value.get("regex"), str):
            _re2(value["regex"])
        return value

    @field_validator("customerio")
    @classmethod
    def _cio_target(cls, value: str) -> str:
        if not _CIO_TARGET.match(value):
            raise ValueError(
                f"unknown Customer.io target `{value}`; use id, email, cio_id, anonymous_id, "
                "phone, none or attribute:<name>"
            )
        return value

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BlockRuleConfig(BaseConfig):
    """Blocked values for one type (or for `all_types`)."""

    exact_ci: tuple[str, ...] = ()
    """Values blocked after normalisation, compared case-insensitively (`[TBD]` blocks `TBD`,
    `tbd` and `Tbd`)."""

    exact: tuple[str, ...] = ()
    """Values blocked after normalisation, compared exactly (for case-sensitive ids)."""

    regex: tuple[RE2Pattern, ...] = ()
    """Regexes (RE2 syntax, searched) that block a normalised value."""


class IdentitySourceConfig(BaseConfig):
    """A warehouse table or query whose rows link identifiers to each other."""

    name: str
    """Unique name, used in the edge, merge and explain outputs."""

    source: str | None = None
    """Which `sources:` warehouse to read from. May be left out when lockgate.yml declares
    one warehouse; required when it declares several."""

    table: str | None = None
    """A table to read (give `table` or `sql`, not both)."""

    sql: str | None = Field(default=None, validation_alias=AliasChoices("sql", "query"))
    """A query to run instead of a table (`query:` is accepted as a synonym)."""

    mode: Literal["snapshot", "append_only"] = "snapshot"
    """`snapshot`: each run reads every row, and links whose rows are gone are retracted.
    `append_only`: each run reads new rows only and links accumulate."""

    trust: int = Field(default=1, ge=1, le=9)
    """Evidence rank of this source's links: 1 = same row in a system of record, 2 = cross-system
    links, 3 = event-stream identifies. Lower ranks are applied first."""

    columns: dict[str, str] | None = None
    """Column name → identifier type. By default every column named after an identifier type."""

    observed_at: str | None = None
    """Column with when the row was observed; orders links within a batch (and for a
    `keep_latest` cap). A timestamp without a time zone is a local time in its source's
    `timezone` (UTC when unset)."""

    key: str | None = None
    """Column identifying the row, shown by `explain` (which stops, naming it, when the source
    has no such column); the row number when unset."""

    @field_validator("name", "observed_at", "key")
    @classmethod
    def _not_blank(cls, value: str | None, info: ValidationInfo) -> str | None:
        # a blank `observed_at` or `key` was taken for none (links unordered, rows numbered)
        if value is not None and not value.strip():
            fix = (
                "give the identity source a name, e.g. `crm`"
                if info.field_name == "name"
                else "name a column of the source, or leave the key out"
            )
            raise ValueError(f"`{info.field_name}` is empty; {fix}")
        return value

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for column in value or {}:
            if not column.strip():
                raise ValueError(
                    "`columns` maps an empty column name; name a column of the source "
                    "(`columns: {email_address: email}`)"
                )
        return value

    @model_validator(mode="after")
    def _table_or_sql(self) -> IdentitySourceConfig:
        if (self.table is None) == (self.sql is None):
            raise ValueError(f"identity source `{self.name}` needs exactly one of `table` or `sql`")
        given = self.table if self.table is not None else self.sql
        if given is not None and not given.strip():
            # read as `select * from` or as no query at all, every run's error
            key = "table" if self.table is not None else "sql"
            raise ValueError(f"identity source `{self.name}`: `{key}` is empty")
        return self


class MergePolicyConfig(BaseConfig):
    """When profile merges turn into Customer.io `merge` calls."""

    enabled: bool = True
    """`false` records merges in the merge log but never sends a Customer.io merge: `plan` and
    each run's report list the merges kept back (profile, both people), to make by hand
    (docs/identity.md, "Merges turned off")."""

    min_path_rank: int | None = 2
    """Only merge Customer.io people when the joining evidence has rank <= this; weaker evidence
    is held for review: the merge is not sent, and `plan` and each run's report list it, as
    for merges turned off (docs/identity.md, "Merges held for review"). `null` accepts any
    rank."""

    max_merges_per_run: int = Field(default=500, ge=0)
    """Circuit breaker: a run that would send more merges stops before sending anything. Every
    merge counts: of two profiles, of a profile's imported duplicates, of a lead's person into a
    returning user's or into its new email's."""


class CustomerioIdentityConfig(BaseConfig):
    """How a profile becomes one Customer.io person."""

    id_from: tuple[str, ...] = ("user_id",)
    """Identifier types, in order, whose value becomes the Customer.io `id`. Without one, the
    person is identified by email."""

    require_known_identifier: bool = True
    """Never create Customer.io people for anonymous-only profiles."""

    merge_policy: MergePolicyConfig = Field(default_factory=MergePolicyConfig)
    """Rules for Customer.io merges."""

    on_split: Literal["review"] = "review"
    """What a split of a profile that already is a Customer.io person does: `review` records it
    in the split log (`needs_review`) and changes nothing in Customer.io; the rows of every part
    keep going to the person they went to before the split. `detach` and `ignore` (from the
    spec) are not built yet and are refused."""

    @field_validator("on_split", mode="before")
    @classmethod
    def _on_split(cls, value: object) -> object:
        if value in ("detach", "ignore"):
            raise ValueError(
                f"`on_split: {value}` is not implemented yet: Lockgate only holds splits of "
                "Customer.io people for review. Set `on_split: review` (the default) or remove "
                "the key; see docs/identity.md#what-happens-in-customerio"
            )
        return value


class IdentityRulesConfig(BaseConfig):
    """Processing rules."""

    processing: Literal["online", "canonical"] = "online"
    """`online`: links are applied batch by batch (earlier batches first), so earlier decisions
    stand. `canonical`: all links in evidence-rank order, ignoring batches (used by a rebase)."""

    max_component_size: int | None = Field(default=200, ge=2)
    """Backstop: a union that would make a profile hold more identifiers than this is refused."""

    overrides_table: str | None = None
    """Operator table of force include/exclude rules (columns `action`, `type_a`, `value_a`,
    `type_b`, `value_b`, `reason`), read from the warehouse of the identity sources."""


def _default_types() -> dict[str, IdentifierTypeConfig]:
    return {
        "user_id": IdentifierTypeConfig(priority=1, limit=1, customerio="id"),
        "email": IdentifierTypeConfig(
            priority=2, limit=5, validate_="email_shape", customerio="email"
        ),
        "anonymous_id": IdentifierTypeConfig(
            priority=9,
            limit=25,
            degree_cap={"user_id": DegreeCapConfig(max=1)},
            bridge_known_profiles=False,
            customerio="anonymous_id",
        ),
        "cio_id": IdentifierTypeConfig(priority=0, limit=None, customerio="cio_id"),
    }


class IdentityConfig(BaseConfig):
    """The `identity:` section of `lockgate.yml`."""

    identifier_types: dict[str, IdentifierTypeConfig] = Field(default_factory=_default_types)
    """Identifier types by name. Defaults to `user_id`, `email`, `anonymous_id` and `cio_id`."""

    blocked_values: dict[str, BlockRuleConfig] = Field(default_factory=dict)
    """Blocked values per type name, or for every type under `all_types`; added to the defaults."""

    default_blocklist: bool = True
    """Apply the built-in blocklist (`null`, `undefined`, `none`, `0`, `-1`, `test@test.com`, only
    zeros and dashes, hashes of the empty string, ...) as well as `blocked_values`."""

    blocked_values_table: str | None = None
    """Operator-maintained table of further blocked values (columns `id_type`, `id_value`);
    `id_type` `*` blocks the value for every type. Read from the warehouse of the identity
    sources (the first one's `source:`), where the analyst tables go too. Each value goes
    through its type's
    normalisation first, as the sources' values do (`Shared@Corp.com` blocks the email
    `shared@corp.com`; a namespaced type's value may carry its `namespace:` prefix or not)."""

    sources: tuple[IdentitySourceConfig, ...] = ()
    """Tables or queries that link identifiers."""

    rules: IdentityRulesConfig = Field(default_factory=IdentityRulesConfig)
    """Processing rules."""

    customerio: CustomerioIdentityConfig = Field(default_factory=CustomerioIdentityConfig)
    """How profiles map onto Customer.io people."""

    @model_validator(mode="after")
    def _references(self) -> IdentityConfig:
        types = self.identifier_types
        if not types:
            raise ValueError("`identifier_types` needs at least one type")
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"identity source `{dupes[0]}` is defined twice")
        for name, spec in types.items():
            for other in spec.degree_cap:
                if other not in types:
                    raise ValueError(f"`{name}.degree_cap` names unknown identifier type `{other}`")
            for src in spec.limit_exempt_sources:
                if src not in names:
                    raise ValueError(
                        f"`{name}.limit_exempt_sources` names unknown identity source `{src}`"
                    )
        for key in self.blocked_values:
            if key != "all_types" and key not in types:
                raise ValueError(f"`blocked_values` names unknown identifier type `{key}`")
        for source in self.sources:
            for column, type_name in (source.columns or {}).items():
                if type_name not in types:
                    raise ValueError(
                        f"identity source `{source.name}` maps column `{column}` to unknown "
                        f"identifier type `{type_name}`"
                    )
        for type_name in self.customerio.id_from:
            if type_name not in types:
                raise ValueError(
                    f"`customerio.id_from` names unknown identifier type `{type_name}`"
                )
        return self

    @property
    def type_order(self) -> tuple[str, ...]:
        """Type names from most to least trusted (priority, then name)."""
        return tuple(
            sorted(self.identifier_types, key=lambda n: (self.identifier_types[n].priority, n))
        )

    def normalize_steps(self, type_name: str) -> tuple[NormalizeStep, ...]:
        """The normalisation steps for a type, falling back to the per-name default."""
        spec = self.identifier_types[type_name]
        if spec.normalize is not None:
            return spec.normalize
        return DEFAULT_NORMALIZE.get(type_name, ("trim",))

    def blocked_for(self, type_name: str) -> BlockRuleConfig:
        """Every block rule for one type: defaults, `all_types` and the type's own rules."""
        exact_ci: list[str] = []
        regex: list[str] = []
        exact: list[str] = []
        if self.default_blocklist:
            exact_ci += DEFAULT_BLOCKED_ALL_TYPES + DEFAULT_BLOCKED_BY_TYPE.get(type_name, ())
            regex += DEFAULT_BLOCKED_REGEX_ALL_TYPES + DEFAULT_BLOCKED_REGEX_BY_TYPE.get(
                type_name, ()
            )
        for key in ("all_types", type_name):
            rule = self.blocked_values.get(key)
            if rule is not None:
                exact_ci += rule.exact_ci
                exact += rule.exact
                regex += rule.regex
        return BlockRuleConfig(exact_ci=tuple(exact_ci), exact=tuple(exact), regex=tuple(regex))

    def source_columns(self, source: IdentitySourceConfig, available: list[str]) -> dict[str, str]:
        """Column → type for a source, given the columns its table actually has."""
        if source.columns is not None:
            return dict(source.columns)
        return {c: c for c in available if c in self.identifier_types}


MODELS: tuple[type[BaseModel], ...] = (
    IdentityConfig,
    IdentifierTypeConfig,
    DegreeCapConfig,
    RegexValidateConfig,
    BlockRuleConfig,
    IdentitySourceConfig,
    IdentityRulesConfig,
    CustomerioIdentityConfig,
    MergePolicyConfig,
)
"""Every model of the `identity:` section, in the order the reference lists them."""


def reference() -> str:
    """The `identity:` config reference as Markdown tables, from the field docstrings."""
    from lockgate.project.fielddocs import field_doc

    lines: list[str] = []
    for model in MODELS:
        lines += [f"### `{model.__name__}`", "", (model.__doc__ or "").strip(), ""]
        lines += ["| key | default | meaning |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            key = field.alias or name
            default = (
                "required"
                if field.is_required()
                else ("(computed)" if field.default_factory is not None else f"`{field.default!r}`")
            )
            text = " ".join((field_doc(model, name) or "").split()).replace("|", "\\|")
            lines.append(f"| `{key}` | {default} | {text} |")
        lines.append("")
    return "\n".join(lines)
