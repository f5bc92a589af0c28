"""Rows a sync's mapping rejects: every one counted, grouped by what went wrong, and kept.

The diff leaves the rejected rows of a plan or run in the temp table ``rejected_rows(k,
reason)`` of the state connection. From it come:

- the report's groups (:func:`groups`): one per kind of reason, with how many rows have it
  and one example. A reason names the column and often the bad value (``column `email`:
  `bob@` is not an email address``); 5,000 such rows are one problem, not 5,000, so the
  values and numbers are masked to tell the kinds apart (:func:`shape`);
- the rows kept in the state for `lockgate runs show` (:data:`KEPT_PER_RUN`, by key: a row
  that stays bad is rejected again by every run, and a sync every 15 minutes would otherwise
  store it 96 times a day);
- every row, for `lockgate plan SYNC --export-rejected FILE` (:func:`table_of`): rejected
  rows are found again on every run, so the full list is always the model's as it is now.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from lockgate.sync.mapping import lit

#: Rejected rows of one run and one stage kept one by one in the state (the first by key);
#: every run counts and groups all of them.
KEPT_PER_RUN = 1000

#: Distinct reason texts grouped by a report; a model with more has the rest counted as one
#: group (a column whose every row is bad with its own value is one problem, seen in the first).
_REASONS_READ = 100_000

#: Groups a report keeps (the largest first).
GROUPS_KEPT = 20

_NUMBER = re.compile(r"\d(?:[\d:.+]|[-T](?=\d))*Z?")


def shape(reason: str) -> str:
    """The kind of a reason: the values in it masked, the names of columns and fields kept.

    ``column `email`: `bob@` is not an email address`` → ``column `email`: `…` is not an
    email address``; ``key `u7` appears 2 times in the model`` → ``key `…` appears N times in
    the model``. A quoted text is a value where the reasons put one: after `value`, `key`,
    `name` or a colon (:mod:`lockgate.sync.mapping` writes them so); any other is a name.
    """
    parts = reason.split("`")
    out: list[str] = []
    for i, part in enumerate(parts):
        if i % 2 == 0 or i == len(parts) - 1:  # outside quotes (or after an unmatched one)
            out.append(_NUMBER.sub("N", part))
        elif _BEFORE_VALUE.search(parts[i - 1]):
            out.append("…")
        else:
            out.append(part)
    return "`".join(out)


_BEFORE_VALUE = re.compile(r"(\b(value|key|name)|:) $")


@dataclass(frozen=True, slots=True)
class ReasonGroup:
    """Rows rejected for one kind of reason."""

    kind: str
    """The reason with its values masked (:func:`shape`)."""
    rows: int
    example: str
    """One of the reasons, whole."""
    key: str
    """The key of a row rejected for ``example``."""
    reasons: int = 1
    """How many different reason texts the group holds (1: every row has ``example``)."""

    @property
    def text(self) -> str:
        """What to show: the reason itself when all rows share it, else the kind."""
        return self.example if self.reasons == 1 else self.kind

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rows": self.rows,
            "example": self.example,
            "key": self.key,
            "reasons": self.reasons,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReasonGroup:
        return cls(
            str(data["kind"]),
            int(data["rows"]),
            str(data["example"]),
            str(data["key"]),
            int(data.get("reasons", 1)),
        )


def group(counted: list[tuple[str, int, str]], total: int) -> tuple[ReasonGroup, ...]:
    """Groups of (reason, rows, a key) counts, largest first; ``total`` is every rejected row
    (the counts may cover only the most common reasons, see :data:`_REASONS_READ`)."""
    kinds: dict[str, list[Any]] = {}
    for reason, rows, key in counted:
        entry = kinds.get(kind := shape(reason))
        if entry is None:
            kinds[kind] = [rows, reason, key, 1]
        else:
            entry[0] += rows
            entry[3] += 1
    found = sorted(
        (ReasonGroup(kind, *entry) for kind, entry in kinds.items()),
        key=lambda g: (-g.rows, g.kind),
    )
    shown = found[:GROUPS_KEPT]
    rest = total - sum(g.rows for g in shown)
    if rest > 0:
        others = found[GROUPS_KEPT:]
        example = others[0] if others else None
        shown.append(
            ReasonGroup(
                "other reasons",
                rest,
                example.example if example else "",
                example.key if example else "",
                reasons=2,
            )
        )
    return tuple(shown)


def groups(con: duckdb.DuckDBPyConnection, total: int) -> tuple[ReasonGroup, ...]:
    """The groups of the temp table ``rejected_rows``, which holds ``total`` rows."""
    if not total:
        return ()
    counted = con.execute(
        "select reason, count(*) as n, min(k) from rejected_rows group by reason "
        f"order by n desc, reason limit {_REASONS_READ}"
    ).fetchall()
    return group([(str(r), int(n), str(k)) for r, n, k in counted], total)


def table_of(con: duckdb.DuckDBPyConnection, sync: str) -> pa.Table:
    """Every row of the temp table ``rejected_rows`` as (sync, key, reason), by key."""
    return con.sql(
        f"select {lit(sync)} as sync, k as key, reason from rejected_rows order by k"
    ).to_arrow_table()
