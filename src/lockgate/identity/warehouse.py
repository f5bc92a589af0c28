"""Warehouse-native stitching: the same graph built and labelled by SQL inside the warehouse.

What is pushed down (plain SQL, written once in DuckDB's dialect and transpiled by sqlglot to
Postgres, Snowflake and BigQuery):

* reading every identity source, with a number column's text as the embedded engine has it
  (`7.0` and `7.00` are `7`; a fraction is dropped), normalising with the steps SQL can do
  portably (`trim` and `trim_unicode_space` with the same characters, `lowercase`,
  `lowercase_if_uuid`, `strip_mailto`,
  `coerce_numeric_string`, `namespace`), the blocklists and validation regexes;
* star edges around each row's most trusted identifier, the node dictionary, distinct edges;
* order-free degree caps (`quarantine`, `keep_latest`, `keep_first`);
* connected components by min-label propagation with pointer jumping, until a pass changes
  nothing (the loop is driven from Python: Snowflake and BigQuery have no keyed recursion);
* per-component type counts, and flagging the components where a limit, the size backstop or
  the bridge rule could refuse a union.

What is not: the exact ordered union-find inside flagged components (their edges, a tiny
fraction, are read back, replayed with the embedded code, and the labels written back), and
the normalisation steps SQL cannot do the same way everywhere (`nfc`, `idna_domain`, `e164`,
`digits_only`, `strip_plus_tag`), operator overrides, the operator
blocklist table, and profile-id carry-forward. `limit_exempt_sources` works: links carry a
bitmask of their sources. The result is the table `<prefix>components`
(`id_type`, `id_value`, `component`, `status`) in the warehouse.

Example::

    stitch = WarehouseStitcher(config, DuckDBRunner(con), tables={"app_users": "app.users"})
    stitch.run()
"""

# ruff: noqa: E501  (generated SQL reads better on one line per clause)
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from lockgate.errors import MissingDependencyError
from lockgate.identity import graph as g
from lockgate.identity.normalize import _E164, _EMAIL_SHAPE, _UUID, MAX_EXACT_FLOAT
from lockgate.project.identity import (
    EMAIL_MAX_CHARS,
    IDENTIFIER_SPACE,
    IdentityConfig,
    RegexValidateConfig,
)

#: what the embedded `trim` step (Arrow's `utf8_trim_whitespace`) takes off: Unicode's white
#: space, without the zero-width characters `trim_unicode_space` also takes
_WHITE_SPACE = "".join(c for c in IDENTIFIER_SPACE if c not in "\u200b\u200c\u200d\ufeff")

DIALECTS = ("duckdb", "postgres", "snowflake", "bigquery")
I64_MAX = np.iinfo(np.int64).max
I64_MIN = np.iinfo(np.int64).min


class Runner(Protocol):
    """Runs SQL in one warehouse. `dialect` is a sqlglot dialect name.

    `schema_of` gives a table's or `(query)`'s columns with the Arrow types Lockgate's source
    for that warehouse reads them as, so number identifiers get the embedded engine's text.
    """

    dialect: str

    def execute(self, sql: str) -> None: ...

    def fetch(self, sql: str) -> list[tuple[Any, ...]]: ...

    def schema_of(self, relation: str) -> pa.Schema: ...


class DuckDBRunner:
    """A DuckDB connection as a `Runner`."""

    dialect = "duckdb"

    def __init__(self, con: Any) -> None:
        self.con = con

    def execute(self, sql: str) -> None:
        self.con.execute(sql)

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self.con.execute(sql).fetchall())

    def schema_of(self, relation: str) -> pa.Schema:
        empty = self.con.sql(f"SELECT * FROM {relation}").limit(0)
        to_table = getattr(empty, "to_arrow_table", None) or empty.fetch_arrow_table
        schema: pa.Schema = to_table().schema
        return schema


class PostgresRunner:
    """A psycopg 3 connection (autocommit) as a `Runner`; SQL is transpiled to Postgres."""

    dialect = "postgres"

    def __init__(self, con: Any) -> None:
        self.con = con

    def _sql(self, sql: str) -> str:
        return ";\n".join(_sqlglot().transpile(sql, read="duckdb", write="postgres"))

    def execute(self, sql: str) -> None:
        with self.con.cursor() as cur:
            cur.execute(self._sql(sql))
            # fresh tables have no statistics: without them Postgres picks nested loops
            words = sql.split()
            if len(words) > 2 and words[0].upper() == "CREATE" and words[1].upper() == "TABLE":
                cur.execute(f"ANALYZE {words[2]}")

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        with self.con.cursor() as cur:
            cur.execute(self._sql(sql))
            return list(cur.fetchall())

    def schema_of(self, relation: str) -> pa.Schema:
        with self.con.cursor() as cur:
            cur.execute(self._sql(f"SELECT * FROM {relation} AS lg_q LIMIT 0"))
            return pa.schema(
                [
                    pa.field(c.name, _postgres_arrow(c.type_code, c.precision, c.scale))
                    for c in cur.description or ()
                ]
            )


def _postgres_arrow(oid: int, precision: int | None, scale: int | None) -> pa.DataType:
    """The Arrow type `sources/postgres.py` reads a number column as (others: text)."""
    if oid == 700:  # float4
        return pa.float32()
    if oid == 701:  # float8
        return pa.float64()
    if oid == 1700:  # numeric: bare or over 38 digits is read as a float, like DuckDB does
        if precision is None or precision > 38:
            return pa.float64()
        return pa.decimal128(precision, scale or 0)
    return {20: pa.int64(), 21: pa.int16(), 23: pa.int32()}.get(oid, pa.string())


def _sqlglot() -> Any:
    try:  # sqlglot comes with the `identity` extra
        import sqlglot
    except ModuleNotFoundError as exc:  # pragma: no cover - the dev install has it
        raise MissingDependencyError("sqlglot", "identity") from exc
    return sqlglot


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class WarehouseStitcher:
    """Generates and runs the stitching SQL for one config.

    `tables` maps an identity source name to the table or `(query)` to read; by default the
    source's own `table` / `sql`. `columns` gives each source's column names, or its Arrow
    schema (as `Source.schema_of` gives it): a float or decimal identifier column must be
    known as one to get the embedded engine's text (`7`, never `7.0` or `7.00`). With a
    runner, the types of a source given by names are read from the warehouse
    (`Runner.schema_of`); without one, such a column is read as text. `dialect` only matters
    for `statements()` without a runner.
    """

    config: IdentityConfig
    runner: Runner | None = None
    tables: Mapping[str, str] = field(default_factory=dict)
    prefix: str = "lg_wh_"
    dialect: str = "duckdb"
    columns: Mapping[str, Sequence[str] | pa.Schema] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.runner is not None:
            self.dialect = self.runner.dialect
        self.types = self.config.type_order
        self.type_rank = {t: i for i, t in enumerate(self.types)}
        self._schemas: dict[str, pa.Schema] = {}

    def _column_types(self, name: str, relation: str) -> dict[str, pa.DataType]:
        """A source's column types: given as a schema, else read through the runner."""
        given = self.columns.get(name)
        if isinstance(given, pa.Schema):
            schema = given
        elif self.runner is not None:
            if name not in self._schemas:
                self._schemas[name] = self.runner.schema_of(relation)
            schema = self._schemas[name]
        else:
            return {}
        return dict(zip(schema.names, schema.types, strict=True))

    # SQL generation -------------------------------------------------------------------
    def _regex(self, expr: str, pattern: str) -> str:
        if self.dialect == "snowflake":  # REGEXP_LIKE matches the whole string there
            pattern = f".*({pattern}).*"
        return f"REGEXP_MATCHES({expr}, {_lit(pattern)})"

    def _text(self, column: str, kind: pa.DataType | None) -> str:
        """A column's identifier text, as `normalize.to_string_array` gives it: a whole float
        (up to 2^53) or decimal is its integer's text (`7`); another float or decimal (a
        fraction, NaN, infinity) is NULL, dropped as the embedded engine drops it (`invalid`).
        A float goes through DOUBLE: Lockgate reads a bare Postgres `numeric` as a float."""
        c = _ident(column)
        if kind is not None and pa.types.is_floating(kind):
            x = f"CAST({c} AS DOUBLE)"
            return (
                f"(CASE WHEN {x} = FLOOR({x}) AND ABS({x}) <= {MAX_EXACT_FLOAT} "
                f"THEN CAST(CAST({x} AS BIGINT) AS VARCHAR) END)"
            )
        if kind is not None and pa.types.is_decimal(kind) and kind.scale != 0:
            return f"(CASE WHEN {c} = TRUNC({c}) THEN CAST(CAST({c} AS DECIMAL(38, 0)) AS VARCHAR) END)"
        return f"CAST({c} AS VARCHAR)"

    @staticmethod
    def _trim(v: str, characters: str) -> str:
        """`v` without `characters` at either end, as the embedded engine trims (a tab, CR/LF or
        no-break space too, not only spaces: a CSV load's trailing newline would otherwise be a
        node of its own here and not there). A text that starts and ends with printable ASCII
        skips the set: `TRIM` with a character set costs several times a plain one."""
        printable = "BETWEEN 33 AND 126"
        return (
            f"(CASE WHEN ASCII({v}) {printable} AND ASCII(RIGHT({v}, 1)) {printable} THEN {v} "
            f"ELSE TRIM({v}, {_lit(characters)}) END)"
        )

    def _normalize(self, type_name: str, column: str, kind: pa.DataType | None = None) -> str:
        v = self._text(column, kind)
        for step in self.config.normalize_steps(type_name):
            if step in ("trim", "trim_unicode_space"):
                v = self._trim(
                    v, IDENTIFIER_SPACE if step == "trim_unicode_space" else _WHITE_SPACE
                )
            elif step in ("e164", "nfc", "idna_domain"):
                pass
            elif step == "lowercase":
                v = f"LOWER({v})"
            elif step == "lowercase_if_uuid":
                v = f"(CASE WHEN {self._regex(v, _UUID)} THEN LOWER({v}) ELSE {v} END)"
            elif step == "strip_mailto":
                v = f"(CASE WHEN LOWER({v}) LIKE 'mailto:%' THEN SUBSTRING({v}, 8) ELSE {v} END)"
            elif step == "coerce_numeric_string":
                v = (
                    f"(CASE WHEN {self._regex(v, r'^-?[0-9]+[.]0+$')} "
                    f"THEN SUBSTRING({v}, 1, STRPOS({v}, '.') - 1) ELSE {v} END)"
                )
        return v

    def _block(self, type_name: str, v: str) -> str:
        """The normalised column `v`, or NULL when blocked or invalid."""
        spec = self.config.identifier_types[type_name]
        rules = self.config.blocked_for(type_name)
        bad = []
        if rules.exact_ci:
            # the list lower-cased by the warehouse's own LOWER too, as the value is
            listed = ", ".join(f"LOWER({_lit(x)})" for x in rules.exact_ci)
            bad.append(f"LOWER({v}) IN ({listed})")
        if rules.exact:
            bad.append(f"{v} IN ({', '.join(_lit(x) for x in rules.exact)})")
        if rules.regex:  # one regex pass: every pattern as an alternative
            bad.append(self._regex(v, "|".join(f"({p})" for p in rules.regex)))
        validator = spec.validator
        pattern = (
            _EMAIL_SHAPE
            if validator == "email_shape"
            else _E164
            if validator == "e164"
            else validator.regex
            if isinstance(validator, RegexValidateConfig)
            else None
        )
        if pattern is not None:
            bad.append(f"NOT {self._regex(v, pattern)}")
        if validator == "email_shape":
            bad.append(f"LENGTH({v}) > {EMAIL_MAX_CHARS}")
        out = v if not spec.namespace else f"({_lit(spec.namespace + ':')} || {v})"
        if not bad:
            return out
        return f"(CASE WHEN {v} IS NULL OR {' OR '.join(bad)} THEN NULL ELSE {out} END)"

    def _source_sql(self, index: int) -> tuple[str, str] | None:
        source = self.config.sources[index]
        given = self.columns.get(source.name, ())
        available = list(given.names if isinstance(given, pa.Schema) else given)
        mapping = (
            self.config.source_columns(source, available) if available or source.columns else {}
        )
        if not mapping:
            return None
        relation = self.tables.get(source.name) or source.table or f"({source.sql})"
        kinds = self._column_types(source.name, relation)
        cols = sorted(mapping.items(), key=lambda kv: (self.type_rank[kv[1]], kv[0]))
        obs = (
            f"CAST({_ident(source.observed_at)} AS TIMESTAMP)"
            if source.observed_at
            else "CAST(NULL AS TIMESTAMP)"
        )
        # normalise in an inner query, so the blocklist tests read a column, not the expression
        inner = ", ".join(
            f"{self._normalize(t, c, kinds.get(c))} AS n{i}" for i, (c, t) in enumerate(cols)
        )
        select = ", ".join(f"{self._block(t, f'n{i}')} AS c{i}" for i, (_, t) in enumerate(cols))
        groups: dict[str, list[int]] = {}
        for i, (_, t) in enumerate(cols):
            groups.setdefault(t, []).append(i)

        def smallest(idx: list[int]) -> str:
            expr = f"c{idx[0]}"
            for j in idx[1:]:
                expr = (
                    f"(CASE WHEN {expr} IS NULL THEN c{j} WHEN c{j} IS NULL THEN {expr} "
                    f"WHEN c{j} < {expr} THEN c{j} ELSE {expr} END)"
                )
            return expr

        ordered = sorted(groups, key=lambda t: self.type_rank[t])
        anchor_v = "COALESCE(" + ", ".join(smallest(groups[t]) for t in ordered) + ")"
        if len(ordered) == 1:
            anchor_v = smallest(groups[ordered[0]])
        anchor_t = (
            "CASE "
            + " ".join(f"WHEN {smallest(groups[t])} IS NOT NULL THEN {_lit(t)}" for t in ordered)
            + " END"
        )
        parts = []
        for i, (_, t) in enumerate(cols):
            parts.append(
                f"SELECT at_ AS type_a, av_ AS value_a, {_lit(t)} AS type_b, c{i} AS value_b, "
                f"{source.trust} AS rnk, obs_ AS obs, CAST({1 << index} AS BIGINT) AS src "
                f"FROM s{index} WHERE c{i} IS NOT NULL"
            )
        return (
            f"s{index} AS (SELECT *, {anchor_t} AS at_, {anchor_v} AS av_ FROM "
            f"(SELECT {select}, obs_ FROM (SELECT {inner}, {obs} AS obs_ FROM {relation}) n{index}) "
            f"raw{index})",
            " UNION ALL ".join(parts),
        )

    def statements(self) -> list[str]:
        """The setup statements (cells → nodes → distinct edges → caps), in DuckDB dialect."""
        p = self.prefix
        ctes: list[str] = []
        selects: list[str] = []
        for i in range(len(self.config.sources)):
            part = self._source_sql(i)
            if part is not None:
                cte, sel = part
                ctes.append(cte)
                selects.append(sel)
        if not selects:
            raise ValueError("no identity source has identifier columns")
        rank_case = (
            "CASE "
            + " ".join(f"WHEN {{t}} = {_lit(t)} THEN {i}" for i, t in enumerate(self.types))
            + " END"
        )
        stmts = [
            f"DROP TABLE IF EXISTS {p}cells",
            f"CREATE TABLE {p}cells AS WITH {', '.join(ctes)} {' UNION ALL '.join(selects)}",
            f"DROP TABLE IF EXISTS {p}nodes",
            f"CREATE TABLE {p}nodes AS SELECT ROW_NUMBER() OVER (ORDER BY trank, id_value) - 1 AS id, "
            f"id_type, id_value, trank FROM (SELECT DISTINCT id_type, id_value, "
            f"{rank_case.format(t='id_type')} AS trank FROM (SELECT type_a AS id_type, value_a AS id_value "
            f"FROM {p}cells UNION ALL SELECT type_b, value_b FROM {p}cells) u) d",
            f"DROP TABLE IF EXISTS {p}edges",
            f"CREATE TABLE {p}edges AS SELECT na.id AS a, nb.id AS b, MIN(c.rnk) AS rnk, "
            f"MIN(c.obs) AS first_obs, MAX(c.obs) AS last_obs, BIT_OR(c.src) AS srcmask, "
            f"na.trank AS ta, nb.trank AS tb, "
            f"CAST('accepted' AS VARCHAR) AS status FROM {p}cells c "
            f"JOIN {p}nodes na ON na.id_type = c.type_a AND na.id_value = c.value_a "
            f"JOIN {p}nodes nb ON nb.id_type = c.type_b AND nb.id_value = c.value_b "
            f"WHERE na.id <> nb.id GROUP BY na.id, nb.id, na.trank, nb.trank",
        ]
        stmts += self._cap_statements()
        return stmts

    def _cap_statements(self) -> list[str]:
        p = self.prefix
        out: list[str] = [f"DROP TABLE IF EXISTS {p}quarantine"]
        out.append(
            f"CREATE TABLE {p}quarantine (node BIGINT, neighbour_rank INTEGER, degree BIGINT, "
            f"max_degree INTEGER, policy VARCHAR)"
        )
        for t_name in self.types:
            for other, cap in sorted(self.config.identifier_types[t_name].degree_cap.items()):
                t, nt = self.type_rank[t_name], self.type_rank[other]
                holders = (
                    f"SELECT a AS holder, a, b FROM {p}edges WHERE ta = {t} AND tb = {nt} "
                    f"UNION ALL SELECT b AS holder, a, b FROM {p}edges WHERE tb = {t} AND ta = {nt}"
                )
                out.append(
                    f"INSERT INTO {p}quarantine SELECT holder, {nt}, COUNT(*), {cap.max}, "
                    f"{_lit(cap.policy)} FROM ({holders}) h GROUP BY holder HAVING COUNT(*) > {cap.max}"
                )
        # all caps counted above, before any is applied
        out.append(
            f"UPDATE {p}edges SET status = 'quarantined' WHERE a IN (SELECT node FROM {p}quarantine "
            f"WHERE policy = 'quarantine') OR b IN (SELECT node FROM {p}quarantine WHERE policy = 'quarantine')"
        )
        for t_name in self.types:
            for other, cap in sorted(self.config.identifier_types[t_name].degree_cap.items()):
                if cap.policy == "quarantine":
                    continue
                t, nt = self.type_rank[t_name], self.type_rank[other]
                order = (
                    "e.last_obs DESC NULLS LAST"
                    if cap.policy == "keep_latest"
                    else "e.first_obs ASC NULLS LAST"
                )
                ranked = (
                    f"SELECT e.a, e.b, ROW_NUMBER() OVER (PARTITION BY q.node ORDER BY {order}, e.rnk, "
                    f"e.first_obs NULLS LAST, e.ta, na.id_value, e.tb, nb.id_value) AS pos "
                    f"FROM {p}edges e JOIN {p}quarantine q ON q.policy = {_lit(cap.policy)} "
                    f"AND q.neighbour_rank = {nt} AND ((e.a = q.node AND e.ta = {t} AND e.tb = {nt}) "
                    f"OR (e.b = q.node AND e.tb = {t} AND e.ta = {nt})) "
                    f"JOIN {p}nodes na ON na.id = e.a JOIN {p}nodes nb ON nb.id = e.b "
                    f"WHERE e.status = 'accepted'"
                )
                out.append(f"DROP TABLE IF EXISTS {p}capped")
                out.append(
                    f"CREATE TABLE {p}capped AS SELECT a, b FROM ({ranked}) r WHERE r.pos > 1"
                )
                out.append(
                    f"UPDATE {p}edges SET status = 'capped' WHERE status = 'accepted' AND "
                    f"EXISTS (SELECT 1 FROM {p}capped r WHERE r.a = {p}edges.a AND r.b = {p}edges.b)"
                )
        return out

    def label_statements(self) -> tuple[list[str], str, list[str]]:
        """Min-label propagation: (init statements, the change-count query, one pass)."""
        p = self.prefix
        init = [
            f"DROP TABLE IF EXISTS {p}labels",
            f"CREATE TABLE {p}labels AS SELECT id AS node, id AS label FROM {p}nodes",
            f"DROP TABLE IF EXISTS {p}active",
            f"CREATE TABLE {p}active AS SELECT a, b FROM {p}edges WHERE status = 'accepted'",
        ]
        step = [
            f"DROP TABLE IF EXISTS {p}labels_next",
            f"CREATE TABLE {p}labels_next AS SELECT l.node, CASE WHEN m.best < l.label THEN m.best "
            f"ELSE l.label END AS label FROM {p}labels l LEFT JOIN (SELECT node, MIN(label) AS best FROM "
            f"(SELECT e.a AS node, lb.label FROM {p}active e JOIN {p}labels lb ON lb.node = e.b "
            f"UNION ALL SELECT e.b AS node, la.label FROM {p}active e JOIN {p}labels la ON la.node = e.a) n "
            f"GROUP BY node) m ON m.node = l.node",
            # pointer jumping: a label is a node id, so follow it once
            f"DROP TABLE IF EXISTS {p}labels_jump",
            f"CREATE TABLE {p}labels_jump AS SELECT x.node, y.label FROM {p}labels_next x "
            f"JOIN {p}labels_next y ON y.node = x.label",
        ]
        changed = (
            f"SELECT COUNT(*) FROM {p}labels_jump j JOIN {p}labels l ON l.node = j.node "
            f"WHERE j.label <> l.label"
        )
        return init, changed, step

    def flag_sql(self) -> str:
        """Components where a union could be refused (limits, size, bridge rule)."""
        p = self.prefix
        conds = []
        for t_name in self.types:
            limit = self.config.identifier_types[t_name].limit
            if limit is not None:
                conds.append(
                    f"SUM(CASE WHEN n.trank = {self.type_rank[t_name]} THEN 1 ELSE 0 END) > {limit}"
                )
        if self.config.rules.max_component_size is not None:
            conds.append(f"COUNT(*) > {self.config.rules.max_component_size}")
        weak = [
            self.type_rank[t]
            for t in self.types
            if not self.config.identifier_types[t].bridge_known_profiles
        ]
        flagged = (
            f"SELECT l.label FROM {p}labels l JOIN {p}nodes n ON n.id = l.node GROUP BY l.label "
            f"HAVING {' OR '.join(conds) if conds else 'FALSE'}"
        )
        if weak:
            weak_list = ", ".join(str(w) for w in weak)
            known = (
                f"SELECT l.label FROM {p}labels l JOIN {p}nodes n ON n.id = l.node "
                f"WHERE n.trank NOT IN ({weak_list}) GROUP BY l.label HAVING COUNT(*) >= 2"
            )
            hubs = (
                f"SELECT DISTINCT l.label FROM (SELECT node FROM (SELECT a AS node FROM {p}active "
                f"UNION ALL SELECT b FROM {p}active) d GROUP BY node HAVING COUNT(*) >= 2) h "
                f"JOIN {p}nodes n ON n.id = h.node AND n.trank IN ({weak_list}) "
                f"JOIN {p}labels l ON l.node = h.node"
            )
            flagged = f"{flagged} UNION SELECT label FROM ({hubs}) hb WHERE label IN ({known})"
        return flagged

    # running ----------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        """Run everything in the warehouse; returns timings and counts."""
        if self.runner is None:
            raise ValueError("WarehouseStitcher.run needs a runner")
        run, p = self.runner, self.prefix
        clock = time.perf_counter()
        for sql in self.statements():
            run.execute(sql)
        self.stats["build_s"] = time.perf_counter() - clock
        t0 = time.perf_counter()
        init, changed_sql, step = self.label_statements()
        for sql in init:
            run.execute(sql)
        passes = 0
        while True:
            for sql in step:
                run.execute(sql)
            passes += 1
            changed = int(run.fetch(changed_sql)[0][0])
            run.execute(f"DROP TABLE {p}labels")
            run.execute(f"ALTER TABLE {p}labels_jump RENAME TO {p.split('.')[-1]}labels")
            if changed == 0:
                break
        self.stats["label_s"] = time.perf_counter() - t0
        self.stats["passes"] = passes
        t0 = time.perf_counter()
        self._exact_residual()
        self.stats["residual_s"] = time.perf_counter() - t0
        self.stats["total_s"] = time.perf_counter() - clock
        return self.stats

    def _exact_residual(self) -> None:
        """Replay flagged components with the embedded ordered union-find; write labels back."""
        run, p = self.runner, self.prefix
        assert run is not None
        run.execute(f"DROP TABLE IF EXISTS {p}flagged")
        run.execute(f"CREATE TABLE {p}flagged AS {self.flag_sql()}")
        nodes = run.fetch(
            f"SELECT n.id, n.trank, n.id_value FROM {p}nodes n JOIN {p}labels l ON l.node = n.id "
            f"WHERE l.label IN (SELECT label FROM {p}flagged) ORDER BY n.id"
        )
        edges = run.fetch(
            f"SELECT e.a, e.b, e.rnk, e.first_obs, e.last_obs, e.srcmask FROM {p}edges e JOIN {p}labels l "
            f"ON l.node = e.a WHERE e.status = 'accepted' AND l.label IN (SELECT label FROM {p}flagged)"
        )
        run.execute(f"DROP TABLE IF EXISTS {p}refused")
        run.execute(f"CREATE TABLE {p}refused (a BIGINT, b BIGINT, rule VARCHAR)")
        self.stats["residual_edges"] = len(edges)
        if not nodes:
            self._finish()
            return
        ids = np.array([n[0] for n in nodes], dtype=np.int64)
        local = {int(n): i for i, n in enumerate(ids.tolist())}
        values = [n[2] for n in nodes]
        node_type = np.array([n[1] for n in nodes], dtype=np.int16)

        def micros(ts: Any, default: int) -> int:
            if ts is None:
                return default
            return (
                int(ts.timestamp() * 1_000_000)
                if ts.tzinfo
                else int((ts - ts.__class__(1970, 1, 1)).total_seconds() * 1_000_000)
            )

        a = np.array([local[e[0]] for e in edges], dtype=np.int64)
        b = np.array([local[e[1]] for e in edges], dtype=np.int64)
        graph = g.Graph(
            n_nodes=len(nodes),
            node_type=node_type,
            a=a,
            b=b,
            rank=np.array([e[2] for e in edges], dtype=np.int16),
            batch=np.ones(len(edges), dtype=np.int64),
            first_obs=np.array([micros(e[3], I64_MAX) for e in edges], dtype=np.int64),
            last_obs=np.array([micros(e[4], I64_MIN) for e in edges], dtype=np.int64),
            sources=np.array([int(e[5]) for e in edges], dtype=np.uint64),
        )
        cfg = self.config
        positions = {source.name: i for i, source in enumerate(cfg.sources)}
        rules = g.Rules(
            type_names=self.types,
            limits=tuple(
                -1
                if cfg.identifier_types[t].limit is None
                else int(cfg.identifier_types[t].limit or 0)
                for t in self.types
            ),
            exempt=tuple(
                sum(
                    1 << positions[src]
                    for src in cfg.identifier_types[t].limit_exempt_sources
                    if src in positions
                )
                for t in self.types
            ),
            weak=tuple(not cfg.identifier_types[t].bridge_known_profiles for t in self.types),
            max_size=cfg.rules.max_component_size,
        )
        keys = sorted(
            (
                int(graph.batch[e]),
                int(graph.rank[e]),
                int(graph.first_obs[e]),
                int(node_type[a[e]]),
                values[a[e]],
                int(node_type[b[e]]),
                values[b[e]],
                e,
            )
            for e in range(len(edges))
        )
        roots, refusals = g.ordered_union(graph, [k[-1] for k in keys], rules)
        offset = int(run.fetch(f"SELECT COUNT(*) FROM {p}nodes")[0][0])
        pairs = [(int(ids[n]), offset + int(r)) for n, r in roots.items()]
        run.execute(f"DROP TABLE IF EXISTS {p}relabel")
        run.execute(f"CREATE TABLE {p}relabel (node BIGINT, label BIGINT)")
        for chunk in range(0, len(pairs), 1000):
            rows = ", ".join(f"({x}, {y})" for x, y in pairs[chunk : chunk + 1000])
            run.execute(f"INSERT INTO {p}relabel VALUES {rows}")
        if refusals:
            rows = ", ".join(
                f"({int(ids[a[r.edge]])}, {int(ids[b[r.edge]])}, {_lit(r.rule)})" for r in refusals
            )
            run.execute(f"INSERT INTO {p}refused VALUES {rows}")
        run.execute(f"DROP TABLE IF EXISTS {p}labels_next")
        run.execute(
            f"CREATE TABLE {p}labels_next AS SELECT l.node, COALESCE(r.label, l.label) AS label "
            f"FROM {p}labels l LEFT JOIN {p}relabel r ON r.node = l.node"
        )
        run.execute(f"DROP TABLE {p}labels")
        run.execute(f"ALTER TABLE {p}labels_next RENAME TO {p.split('.')[-1]}labels")
        self._finish()

    def _finish(self) -> None:
        run, p = self.runner, self.prefix
        assert run is not None
        run.execute(f"DROP TABLE IF EXISTS {p}components")
        run.execute(
            f"CREATE TABLE {p}components AS SELECT n.id_type, n.id_value, l.label AS component, "
            f"CASE WHEN q.node IS NULL THEN 'active' ELSE 'quarantined' END AS status "
            f"FROM {p}nodes n JOIN {p}labels l ON l.node = n.id LEFT JOIN (SELECT DISTINCT node "
            f"FROM {p}quarantine WHERE policy = 'quarantine') q ON q.node = n.id"
        )


def transpiled(stitcher: WarehouseStitcher, dialect: str) -> list[str]:
    """Every statement of a run (setup, one labelling pass, flagging) in `dialect`."""
    init, changed, step = stitcher.label_statements()
    out: list[str] = []
    for sql in [*stitcher.statements(), *init, *step, changed, stitcher.flag_sql()]:
        out += _sqlglot().transpile(sql, read="duckdb", write=dialect)
    return out
