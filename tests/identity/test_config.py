"""The `identity:` section refuses what is not built, with the file, line and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.errors import ConfigError
from lockgate.project.loader import load_project

PROJECT = """\
name: split
sources:
  warehouse: {type: duckdb, path: w.duckdb}
destinations:
  customerio: {type: customerio, track_url: "http://127.0.0.1:9"}
identity:
  customerio:
    on_split: %s
"""


@pytest.mark.parametrize("policy", ["detach", "ignore"])
def test_an_on_split_policy_that_is_not_built_is_refused(tmp_path: Path, policy: str) -> None:
    (tmp_path / "lockgate.yml").write_text(PROJECT % policy)
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    message = str(err.value)
    assert "lockgate.yml:8" in message and f"`on_split: {policy}` is not implemented" in message
    assert "on_split: review" in message


def test_review_is_the_default_and_accepted(tmp_path: Path) -> None:
    (tmp_path / "lockgate.yml").write_text(PROJECT % "review")
    project = load_project(tmp_path)
    assert project.config.identity is not None
    assert project.config.identity.customerio.on_split == "review"


REGEX_PROJECT = """\
name: regex
sources:
  warehouse: {type: duckdb, path: w.duckdb}
destinations:
  customerio: {type: customerio, track_url: "http://127.0.0.1:9"}
identity:
  identifier_types:
    user_id: {priority: 1, limit: 1, customerio: id}
    email:
      priority: 2
      customerio: email
      validate: {regex: '%s'}
  blocked_values:
    email:
      regex:
        - '@mailinator\\.com$'
        - '%s'
"""


@pytest.mark.parametrize(
    ("validate", "blocked", "line", "key", "why"),
    [
        ("[a-", "x", 12, "identifier_types.email.validate", "`[a-` is not a regular expression"),
        ("@", "[a-", 17, "blocked_values.email.regex.1", "missing ]: [a-"),
        # Python's `re` takes a lookahead, RE2 (what runs the pattern) does not
        ("^(?=.*@)", "x", 12, "identifier_types.email.validate", "invalid perl operator: (?="),
        ("@", "(?<!no)reply@", 17, "blocked_values.email.regex.1", "invalid perl operator: (?<"),
    ],
)
def test_a_regex_the_engine_cannot_run_is_a_config_error_at_its_line(
    tmp_path: Path, validate: str, blocked: str, line: int, key: str, why: str
) -> None:
    """Before, `[a-` was "unexpected error ... a bug in Lockgate" naming nothing, and a
    lookahead passed `validate` and then failed every sync at resolve."""
    (tmp_path / "lockgate.yml").write_text(REGEX_PROJECT % (validate, blocked))
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    message = str(err.value)
    assert f"lockgate.yml:{line}" in message and why in message
    assert f"(at `identity.{key}`)" in message
    assert "is not a regular expression Lockgate can run" in message
    assert err.value.hint is not None and "RE2 syntax" in err.value.hint
    assert "no lookarounds (`(?=`" in err.value.hint


def test_regexes_in_re2_syntax_load(tmp_path: Path) -> None:
    (tmp_path / "lockgate.yml").write_text(REGEX_PROJECT % ("^[^@]+@(?i:[a-z.]+)$", "\\d{9}\\z"))
    project = load_project(tmp_path)
    assert project.config.identity is not None
    assert project.config.identity.blocked_values["email"].regex[1] == "\\d{9}\\z"


TWO_WAREHOUSES = """\
name: two
sources:
  warehouse: {type: duckdb, path: w.duckdb}
  analytics: {type: duckdb, path: a.duckdb}
destinations:
  customerio: {type: customerio, track_url: "http://127.0.0.1:9"}
identity:
  identifier_types:
    email: {priority: 2, limit: 5, customerio: email}
  customerio: {id_from: []}
  sources:
    - {name: crm, table: crm, source: warehouse}
    - {name: leads, table: leads}
"""


def test_an_identity_source_without_source_among_several_warehouses_is_refused(
    tmp_path: Path,
) -> None:
    """Before, every sync failed at resolve with "reads from `None`, which lockgate.yml does
    not declare"."""
    (tmp_path / "lockgate.yml").write_text(TWO_WAREHOUSES)
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    assert str(err.value).startswith(
        "lockgate.yml:13: identity source `leads` has no `source:`, and lockgate.yml declares "
        "several warehouses"
    )
    assert err.value.hint == (
        "add `source: <name>` naming the warehouse that holds `leads`; declared sources: "
        "`analytics`, `warehouse`"
    )
    (tmp_path / "lockgate.yml").write_text(TWO_WAREHOUSES.replace("leads}", "leads, source: a}"))
    with pytest.raises(ConfigError):
        load_project(tmp_path)  # a name, but not a declared one
    (tmp_path / "lockgate.yml").write_text(
        TWO_WAREHOUSES.replace("leads}", "leads, source: analytics}")
    )
    assert load_project(tmp_path).config.identity is not None


@pytest.mark.parametrize("written", ['table: ""', 'sql: "  "'])
def test_an_identity_source_of_an_empty_table_or_sql_is_refused_at_its_line(
    tmp_path: Path, written: str
) -> None:
    # it passed `validate` and failed every sync at resolve (`select * from`, or no query)
    project = (PROJECT % "review").replace(
        "identity:\n",
        "identity:\n  identifier_types:\n    email: {priority: 1, customerio: email}\n"
        f"  sources:\n    - {{name: crm, {written}}}\n",
    )
    (tmp_path / "lockgate.yml").write_text(project)
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    key = written.split(":")[0]
    assert f"lockgate.yml:10: identity source `crm`: `{key}` is empty" in str(err.value)
