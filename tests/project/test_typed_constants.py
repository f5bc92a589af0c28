"""A field's constant (`value:`) and null default (`default:`) are sent as its `type:` makes a
column's value, or refused when the file loads: never sent as text next to rows of another
type in one Customer.io attribute."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.errors import ConfigError
from lockgate.project.loader import load_project

PROJECT = """\
name: acme
sources:
  warehouse: {type: duckdb, path: w.duckdb}
"""

SYNC = """\
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  plan: plan
"""


def load(root: Path, fields: str) -> dict[str, object]:
    (root / "syncs").mkdir(exist_ok=True)
    (root / "lockgate.yml").write_text(PROJECT)
    (root / "syncs" / "profile.yml").write_text(SYNC + fields)
    sync = load_project(root).sync("profile")
    return {
        name: spec.value if spec.value is not None else spec.default
        for name, spec in sync.attributes.items()
        if name != "plan"
    }


def test_constants_and_defaults_take_the_fields_type(tmp_path: Path) -> None:
    fields = (
        "  trial_ends_at: {column: t, type: timestamp, on_null: default, "
        'default: "2030-01-01T00:00:00Z"}\n'
        "  renews_on: {column: r, type: date, on_null: default, default: 2030-01-01}\n"
        '  launched_at: {value: "2024-05-01T00:00:00Z", type: timestamp}\n'
        '  beta: {value: "yes", type: boolean}\n'
        '  seats: {column: s, type: integer, on_null: default, default: "12"}\n'
        '  score: {value: "9.50", type: number}\n'
        "  whole: {value: 5.0, type: number}\n"
        "  code: {value: 7, type: string}\n"
        "  doc: {value: '{\"a\": [1, 2]}', type: json}\n"
        '  note: {value: "as is"}\n'
    )
    assert load(tmp_path, fields) == {
        "trial_ends_at": 1893456000,
        "renews_on": 1893456000,
        "launched_at": 1714521600,
        "beta": True,
        "seats": 12,
        "score": 9.5,
        "whole": 5,
        "code": "7",
        "doc": {"a": [1, 2]},
        "note": "as is",
    }


@pytest.mark.parametrize(
    ("field", "said"),
    [
        (
            '{column: seats, type: integer, on_null: default, default: "unlimited"}',
            "`default`: `unlimited` is not an integer; a `type: integer` constant is a whole "
            "number such as `10`",
        ),
        (
            '{value: "soon", type: timestamp}',
            "`value`: `soon` is not a timestamp (use ISO 8601, e.g. 2026-01-31T12:00:00Z)",
        ),
        (
            '{value: "maybe", type: boolean}',
            "`value`: `maybe` is not a boolean (true/false/1/0); a `type: boolean` constant "
            "is `true` or `false`",
        ),
        (
            # sent as it was, a time past the year 50000, as a column's value is rejected
            "{value: 1767323045000, type: timestamp}",
            "`value`: `1767323045000` is not unix seconds (it would be past the year 5000): it "
            "looks like milliseconds; write `1767323045`",
        ),
        (
            "{value: [1, 2], type: number}",
            "`value`: a list cannot be sent as `type: number`; use `type: json`, or leave "
            "`type` out",
        ),
    ],
)
def test_a_constant_the_type_cannot_take_is_refused_at_its_line(
    tmp_path: Path, field: str, said: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"  extra: {field}\n")
    assert caught.value.location == "syncs/profile.yml:9"
    assert caught.value.reason == f"{said} (at `attributes.extra`)"
