"""Config mistakes a first-time user makes: each gives an error naming where it is and how
to fix it, exits 1, shows no traceback and never prints a secret."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from lockgate.cli import main

PROJECT = """\
name: acme
sources:
  warehouse:
    type: duckdb
    path: w.duckdb
"""

SYNC = """\
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: id
identify_by: {id: id, email: email}
attributes:
  plan: plan
"""


def project(root: Path, lockgate_yml: str = PROJECT, sync: str = SYNC) -> Path:
    (root / "syncs").mkdir(parents=True, exist_ok=True)
    (root / "lockgate.yml").write_text(lockgate_yml)
    (root / "syncs" / "profile.yml").write_text(sync)
    with duckdb.connect(str(root / "w.duckdb")) as con:
        con.execute(
            "create or replace table users as select 1 as id, 'a@x.io' as email, 'pro' as plan"
        )
    return root


def fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the CLI; it must exit 1 without a traceback. Returns what it printed."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    text = out.out + out.err
    assert exited.value.code == 1, text
    assert "Traceback" not in text
    return text


def validate_fails(
    capsys: pytest.CaptureFixture[str], root: Path, lockgate_yml: str = PROJECT, sync: str = SYNC
) -> str:
    """`lockgate validate` of the project these files make: it must exit 1 without a
    traceback. Returns what it printed."""
    project(root, lockgate_yml, sync)
    return fails(capsys, "validate", "--project", str(root))


def validate_says(
    capsys: pytest.CaptureFixture[str], root: Path, lockgate_yml: str = PROJECT, sync: str = SYNC
) -> str:
    """:func:`validate_fails`, what it printed on one line (a message wraps at the terminal's
    width)."""
    return " ".join(validate_fails(capsys, root, lockgate_yml, sync).split())


def key_added(sync: str, added: str) -> tuple[str, str]:
    """``sync`` with the key ``added`` at its end, and where an error about it is shown
    (`syncs/profile.yml:<its line>:`)."""
    return sync + added + "\n", f"syncs/profile.yml:{sync.count(chr(10)) + 1}:"


def test_a_key_with_brackets_is_named_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = validate_fails(capsys, tmp_path, sync=SYNC + "attributes[0]: plan\n")
    assert "syncs/profile.yml:9: unknown key `attributes[0]`" in err


def test_an_unknown_key_suggests_the_key_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = validate_fails(capsys, tmp_path, sync=SYNC.replace("identify_by:", "identfy_by:"))
    assert "syncs/profile.yml:6: unknown key `identfy_by`" in err
    assert "did you mean `identify_by`?" in err
    # in a nested spec, only keys valid there are suggested
    err = validate_fails(capsys, tmp_path, sync=SYNC.replace("plan: plan", "plan: {colum: plan}"))
    assert "syncs/profile.yml:8: unknown key `colum`" in err
    assert "did you mean `column`?" in err
    err = validate_fails(capsys, tmp_path, PROJECT.replace("path:", "pathh:"))
    assert "lockgate.yml:5: unknown key `pathh`" in err and "did you mean `path`?" in err


def test_validate_refuses_an_unknown_identifier_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = validate_fails(capsys, tmp_path, sync=SYNC.replace("{id: id,", "{idd: id,"))
    assert "syncs/profile.yml:6: identifier type `idd`" in err
    assert "did you mean `id`?" in err and "identity:" in err
    # with identity rules, the declared types are the ones allowed
    identity = "identity:\n  identifier_types:\n    user_id: {priority: 1, customerio: id}\n"
    err = validate_fails(
        capsys, tmp_path, PROJECT + identity, SYNC.replace("{id: id, email: email}", "{usr_id: id}")
    )
    assert "syncs/profile.yml:6: identifier type `usr_id`" in err
    assert "did you mean `user_id`?" in err


def test_validate_refuses_a_model_file_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = validate_fails(
        capsys, tmp_path, sync=SYNC.replace("{table: users}", "models/profile.sql")
    )
    assert "syncs/profile.yml:3: sync `profile`: cannot read model file `models/profile.sql`" in err
    assert "relative to the project folder" in err


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:hunter2@127.0.0.1:1/db",
        "'host=127.0.0.1 port=1 user=u password=hunter2'",
        "'postgresql://u@127.0.0.1:1/db?sslmode=disable&password=hunter2'",
    ],
)
def test_a_literal_password_in_a_postgres_url_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    yml = PROJECT.replace("type: duckdb\n    path: w.duckdb", f"type: postgres\n    url: {url}")
    err = validate_fails(capsys, tmp_path, yml)
    assert "lockgate.yml:5: `url` must be an environment reference like `${WAREHOUSE_URL}`" in err
    assert "hunter2" not in err


def test_an_empty_environment_variable_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    yml = PROJECT.replace("type: duckdb\n    path: w.duckdb", "type: postgres\n    url: ${WH_URL}")
    project(tmp_path, yml)
    monkeypatch.setenv("WH_URL", "")
    err = fails(capsys, "sources", "inspect", "--project", str(tmp_path))
    assert "environment variable `WH_URL` (for `url`) is set but empty" in err
    assert "export WH_URL=" in err
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", "site")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "")
    main(["validate", "--project", str(tmp_path)])
    said = " ".join(capsys.readouterr().err.split())
    assert "`CUSTOMERIO_API_KEY` (for `destinations.customerio.api_key`) is empty" in said


def test_a_column_typo_in_a_sync_resolved_through_identity_names_the_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = """\
identity:
  identifier_types:
    user_id: {priority: 1, customerio: id}
  sources:
    - {name: app, source: warehouse, trust: 1, sql: "select id as user_id from users"}
"""
    sync = SYNC.replace("primary_key: id", "primary_key: idd")
    project(tmp_path, PROJECT + identity, sync.replace("{id: id, email: email}", "{user_id: id}"))
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("insert into users values (1, 'a@x.io', 'free')")
    err = fails(capsys, "plan", "profile", "--project", str(tmp_path))
    assert "primary key column `idd` is not in the model" in err
    assert "the model's columns are `id`" in err and "Traceback" not in err


def test_an_unexpected_failure_shows_no_traceback_without_debug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a failure no check foresaw (here the DuckDB library itself breaking): one error line,
    # and `--debug` for the traceback
    project(tmp_path, PROJECT, SYNC)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the database library broke")

    from lockgate.state import store

    monkeypatch.setattr(duckdb, "connect", broken)
    # no instance this process keeps from earlier tests: the state's open starts one
    monkeypatch.setattr(store, "_ENGINES", store._Engines())
    err = fails(capsys, "plan", "profile", "--project", str(tmp_path))
    assert "unexpected RuntimeError: the database library broke" in err and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError):
        main(["--debug", "plan", "profile", "--project", str(tmp_path)])


def test_a_source_without_a_known_type_says_which_types_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = validate_fails(capsys, tmp_path, PROJECT.replace("    type: duckdb\n", ""))
    assert "lockgate.yml:3: `sources.warehouse` has no `type`" in err
    assert "add `type:` with one of `duckdb`, `postgres`, `snowflake`, `bigquery`" in err
    err = validate_fails(capsys, tmp_path, PROJECT.replace("type: duckdb", "type: duckbd"))
    assert "`type` `duckbd` is not one of `duckdb`, `postgres`, `snowflake`, `bigquery`" in err


def test_a_sync_file_that_is_a_list_says_it_must_be_a_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = validate_fails(capsys, tmp_path, sync="- name: profile\n- source: warehouse\n")
    assert "syncs/profile.yml:1: the file holds a list; it must be a mapping of keys" in err


def test_an_empty_sync_file_and_a_numeric_primary_key_say_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project(tmp_path, PROJECT, SYNC)
    (tmp_path / "syncs" / "empty.yml").write_text("")
    err = fails(capsys, "validate", "--project", str(tmp_path))
    assert "syncs/empty.yml: the file is empty" in err
    (tmp_path / "syncs" / "empty.yml").unlink()
    (tmp_path / "syncs" / "profile.yml").write_text(
        SYNC.replace("primary_key: id", "primary_key: 5")
    )
    err = fails(capsys, "validate", "--project", str(tmp_path))
    assert "`primary_key` is a column name or a list of them" in err and "not `5`" in err


@pytest.mark.parametrize(
    ("change", "where", "said"),
    [
        (
            ("plan: plan", "plan:"),
            "syncs/profile.yml:8:",
            "an attribute or property is a column name (`plan: plan_column`) or a mapping such "
            "as `{column: plan_column, type: string}`, not empty (at `attributes.plan`)",
        ),
        (
            ("plan: plan", "plan: 5"),
            "syncs/profile.yml:8:",
            "an attribute or property is a column name (`plan: plan_column`) or a mapping such "
            "as `{column: plan_column, type: string}`, not `5` (a constant is `{value: 5}`) "
            "(at `attributes.plan`)",
        ),
        (
            ("name: profile", "name: Customer-Profile"),
            "syncs/profile.yml:1:",
            "sync name `Customer-Profile` may hold only lower-case letters, digits and `_`, "
            "starting with a letter: e.g. `customer_profile` (at `name`)",
        ),
        (
            (
                "attributes:\n  plan: plan\n",
                "event: {name: plan, id: id}\nbackfill: {max_age: 72}\n",
            ),
            "syncs/profile.yml:7:",
            "`max_age: 72` has no unit; write a duration such as `72h`, `30m`, `90s` or `7d` "
            "(at `backfill.max_age`)",
        ),
    ],
)
def test_a_value_of_the_wrong_shape_says_what_is_expected_with_an_example(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    where: str,
    said: str,
) -> None:
    # not pydantic's "a valid dictionary or instance of FieldConfig" / "should match pattern"
    sync = SYNC.replace(*change)
    if "event:" in sync:
        sync = sync.replace("kind: people", "kind: events").replace("primary_key: id\n", "")
    assert f"Error: {where} {said}" in validate_says(capsys, tmp_path, sync=sync)


def test_validate_refuses_an_acknowledged_type_that_is_no_type_and_warns_of_an_unread_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in `accept_type_changes` would acknowledge nothing and leave the sync refused:
    a type that is not one is an error at its line, a column the sync does not read a
    warning."""
    err = validate_fails(
        capsys, tmp_path, sync=SYNC + "guardrails:\n  accept_type_changes: {plan: VARCHR}\n"
    )
    assert "syncs/profile.yml:10: `accept_type_changes.plan`: `VARCHR` is not a type" in err
    assert "timestamp, number, string, boolean, json, nested" in err

    unread = SYNC + 'guardrails:\n  accept_type_changes: {plann: string, plan: "DECIMAL(12, 2)"}\n'
    project(tmp_path, sync=unread)
    main(["validate", "--project", str(tmp_path)])  # a warning: exits 0
    out = " ".join(capsys.readouterr().out.split())
    assert "acknowledges a type change of `plann`" in out
    assert "a column it does not read" in out and out.count("acknowledges a type change") == 1


EVENTS = """\
name: clicks
source: warehouse
model: {table: users}
kind: events
identify_by: {id: id}
event: {name: plan, id: id}
"""


@pytest.mark.parametrize(
    ("sync", "added", "said"),
    [
        # keys the kind has no use for were taken and ignored: `mode: update` on events still
        # created people, `primary_key` keyed nothing, `backfill` held back no person
        (EVENTS, "mode: update", "`mode` does not apply to an `events` sync"),
        (EVENTS, "primary_key: id", "an `events` sync is keyed by `event.id`, not `primary_key`"),
        (SYNC, "backfill: {max_age: 72h}", "`backfill` belongs to `events` syncs"),
        (SYNC, "object_id: plan", "`object_id` belongs to `relationships` syncs"),
        (SYNC, 'object_type_id: "1"', "`object_type_id` belongs to `objects` and `relationships`"),
        # errors across keys named line 2 (`name:`) and `(top level)`: now the key's own line
        (SYNC, "delete_removed: true", "`delete_removed` only applies with `mode: mirror`"),
        (EVENTS, "attributes: {plan: plan}", "`attributes` belong to `people` syncs"),
        (EVENTS, "on_change: [{attribute: plan, event: x}]", "`on_change` belongs to `people`"),
    ],
)
def test_a_key_the_sync_kind_does_not_use_is_an_error_at_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sync: str, added: str, said: str
) -> None:
    written, where = key_added(sync, added)
    err = validate_says(capsys, tmp_path, sync=written)
    assert f"Error: {where} {said}" in err
    assert "(top level)" not in err


def test_a_key_a_kind_needs_is_missing_at_the_line_of_its_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = validate_says(capsys, tmp_path, sync=SYNC.replace("primary_key: id\n", ""))
    assert "Error: syncs/profile.yml:4: a `people` sync needs `primary_key` (at `kind`)" in err


def test_a_tab_in_the_indentation_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PyYAML's "found character that cannot start any token" does not say what the character is
    err = validate_says(capsys, tmp_path, sync=SYNC.replace("  plan: plan", "\tplan: plan"))
    assert "Error: syncs/profile.yml:8: not valid YAML" in err
    assert "hint: this line is indented with a tab; YAML indents with spaces only" in err


def test_an_unquoted_reference_inside_braces_is_named_with_the_quotes_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `{path: ${WAREHOUSE}}`: the reference's own `}` closes the map, and PyYAML says only
    # "did not find expected ',' or '}'"
    inline = PROJECT.replace(
        "  warehouse:\n    type: duckdb\n    path: w.duckdb\n",
        "  warehouse: {type: duckdb, path: ${WAREHOUSE_PATH}}\n",
    )
    err = validate_says(capsys, tmp_path, lockgate_yml=inline)
    assert "Error: lockgate.yml:3: not valid YAML" in err
    assert 'hint: inside `{ ... }`, quote an environment reference: `"${WAREHOUSE_PATH}"`' in err
    # quoted as the hint says, the file reads
    from lockgate.project.loader import read_yaml

    quoted = tmp_path / "quoted.yml"
    quoted.write_text(inline.replace("${WAREHOUSE_PATH}", '"${WAREHOUSE_PATH}"'))
    data, _ = read_yaml(quoted)
    assert data["sources"]["warehouse"]["path"] == "${WAREHOUSE_PATH}"


OBJECTS = """\
name: profile
source: warehouse
model: {table: users}
kind: objects
object_type_id: "1"
primary_key: id
attributes:
  plan: plan
"""


@pytest.mark.parametrize(
    ("sync", "added", "said"),
    [
        # the block is also incomplete for an events sync (no `id`): that error came first,
        # and the user went on to add keys to a block the sync does not use
        (SYNC, "event:\n  name: signed_up", "`event` and `properties` belong to `events` syncs"),
        (SYNC, "properties: {plan: 7}", "`event` and `properties` belong to `events` syncs"),
        (EVENTS, "attributes: {plan: 7}", "`attributes` belong to `people` syncs"),
        (EVENTS, "on_change: [{attribute: plan}]", "`on_change` belongs to `people`"),
        (SYNC, "backfill: {older: later}", "`backfill` belongs to `events` syncs"),
        (SYNC, "relationship_attributes: {x: 7}", "`relationship_attributes` belongs to `rel"),
        # an objects sync took `event` and `properties` and ignored them
        (OBJECTS, "event: {name: x, id: id}", "`event` and `properties` belong to `events` syncs"),
        (OBJECTS, "properties: {plan: plan}", "`event` and `properties` belong to `events` syncs"),
    ],
)
def test_a_block_the_sync_kind_does_not_use_is_named_before_what_is_wrong_inside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sync: str, added: str, said: str
) -> None:
    written, where = key_added(sync, added)
    err = validate_says(capsys, tmp_path, sync=written)
    assert f"Error: {where} {said}" in err
    assert "missing required key" not in err and "more error" not in err


#: secrets wrapped in `${...}` as if they were variable names (no such variables are set)
KEY, PASSWORD = "sk_live_abc123", "pg_pass_hunter2"


def secrets_in_references(root: Path, warehouse: str) -> None:
    source = (
        "type: duckdb\n    path: w.duckdb"
        if warehouse == "duckdb"
        else f"type: postgres\n    url: ${{{PASSWORD}}}"
    )
    yml = PROJECT.replace("type: duckdb\n    path: w.duckdb", source) + (
        "destinations:\n"
        "  customerio:\n"
        "    type: customerio\n"
        "    site_id: ${LG_TEST_SITE}\n"
        f"    api_key: ${{{KEY}}}\n"
        "alerts:\n"
        "  - url: ${hooks_slack_com_services_T0001}\n"
    )
    project(root, yml)


def test_a_secret_wrapped_in_a_reference_is_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`api_key: ${sk_live_abc123}` passes as a reference to a variable not set: the warnings
    and errors about it name the key it is in and its line, never the "variable" (the secret);
    a variable named as they are (`LG_TEST_SITE`) is still named."""
    monkeypatch.setenv("LG_TEST_SITE", "")
    secrets_in_references(tmp_path, "postgres")
    root = str(tmp_path)
    main(["validate", "--project", root])
    out = capsys.readouterr()
    said = " ".join((out.out + out.err).split())
    assert "`LG_TEST_SITE` (for `destinations.customerio.site_id`) is empty" in said
    for key in ("destinations.customerio.api_key", "sources.warehouse.url", "alerts[0].url"):
        assert f"the environment variable named in `{key}` (lockgate.yml:" in said, key
    main(["validate", "--project", root, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert "LG_TEST_SITE" in doc["missing_env"] and len(doc["missing_env"]) == 4
    printed = [said, json.dumps(doc)]

    # what a run, a connection check, the alerts and a key's own error say
    for args in (
        ["validate", "--connect", "--json"],
        ["validate", "--connect"],
        ["sources", "inspect"],
    ):
        with pytest.raises(SystemExit):
            main([*args, "--project", root])
        out = capsys.readouterr()
        printed.append(out.out + out.err)
    monkeypatch.setenv("LG_TEST_SITE", "site")
    secrets_in_references(tmp_path, "duckdb")
    with pytest.raises(SystemExit):
        main(["sync", "profile", "--project", root])
    out = capsys.readouterr()
    printed.append(" ".join((out.out + out.err).split()))
    assert "the environment variable named in `api_key`" in printed[-1]
    for text in printed:
        for secret in (KEY, PASSWORD, "hooks_slack_com"):
            assert secret not in text, text


PLACES = """\
name: acme
sources:
  warehouse:
    type: duckdb
    path: ${LG_TEST_DATA}/w.duckdb
  pg:
    type: postgres
    url: ${LG_TEST_PG_URL}
  snow:
    type: snowflake
    account: acme
    user: bob
    private_key: ${LG_TEST_SNOW_KEY}
destinations:
  customerio:
    type: customerio
    site_id: ${LG_TEST_SITE}
    track_url: http://127.0.0.1:9
alerts:
  - url: ${LG_TEST_ALERT}
webhooks:
  signing_key: ${LG_TEST_SIGNING}
"""


def test_a_variable_not_set_is_named_with_its_source_destination_or_alert_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`environment variable `X` (for `private_key`) is not set` said neither which source
    nor where in lockgate.yml; each such error now names both, never a value."""
    for name in ("DATA", "PG_URL", "SNOW_KEY", "SITE", "ALERT", "SIGNING"):
        monkeypatch.delenv(f"LG_TEST_{name}", raising=False)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "sekrit-api-key")
    project(tmp_path, PLACES)
    at = ["--project", str(tmp_path)]

    # validate lists them all, each at its line
    main(["validate", *at])
    said = capsys.readouterr().err.splitlines()
    for line, name, where in [
        (5, "LG_TEST_DATA", "sources.warehouse.path"),
        (8, "LG_TEST_PG_URL", "sources.pg.url"),
        (13, "LG_TEST_SNOW_KEY", "sources.snow.private_key"),
        (17, "LG_TEST_SITE", "destinations.customerio.site_id"),
        (20, "LG_TEST_ALERT", "alerts[0].url"),
        (22, "LG_TEST_SIGNING", "webhooks.signing_key"),
    ]:
        assert (
            f"warning: lockgate.yml:{line}: environment variable `{name}` (for `{where}`) is "
            "not set; syncs will need it"
        ) in said

    # a command that connects names the source, its option and its line
    for source, line, name, option in [
        ("pg", 8, "LG_TEST_PG_URL", "url"),
        ("snow", 13, "LG_TEST_SNOW_KEY", "private_key"),
        ("warehouse", 5, "LG_TEST_DATA", "path"),
    ]:
        err = fails(capsys, "sources", "inspect", source, *at)
        assert (
            f"Error: lockgate.yml:{line}: source `{source}`: environment variable `{name}` "
            f"(for `{option}`) is not set\n  hint: export {name}=... before running, or change "
            f"`{option}` of source `{source}` in lockgate.yml"
        ) in err

    # a sync: the destination's site id (checked before the model is read), then the
    # source's path; the alert names its line
    err = " ".join(fails(capsys, "sync", "profile", *at).split())
    assert (
        "lockgate.yml:17: destination `customerio`: environment variable `LG_TEST_SITE` (for "
        "`site_id`) is not set"
    ) in err
    assert (  # the first failure of a streak is alerted
        "the `failed` alert to the alert URL was not sent: lockgate.yml:20: alerts[0]: "
        "environment variable `LG_TEST_ALERT` (for `url`) is not set"
    ) in err
    monkeypatch.setenv("LG_TEST_SITE", "site")
    err = " ".join(fails(capsys, "sync", "profile", *at).split())
    assert "lockgate.yml:5: source `warehouse`: environment variable `LG_TEST_DATA`" in err
    monkeypatch.setenv("LG_TEST_DATA", str(tmp_path))
    # the API key left to its default is in the destination's block (line 15)
    monkeypatch.delenv("CUSTOMERIO_API_KEY")
    err = " ".join(fails(capsys, "sync", "profile", *at).split())
    assert (
        "lockgate.yml:15: destination `customerio`: environment variable `CUSTOMERIO_API_KEY` "
        "(for `api_key`) is not set"
    ) in err
    assert "sekrit" not in err


@pytest.mark.parametrize(
    ("item", "shown"),
    [("{column: plan}", '`{"column": "plan"}`'), ("", "empty"), ("[plan, id]", '`["plan", "id"]`')],
)
def test_a_list_of_attributes_holding_a_mapping_or_nothing_is_refused_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], item: str, shown: str
) -> None:
    # `str()` made such an item a column named `{'column': 'plan'}` or `None`: `validate`
    # passed and every run failed, naming a column nobody wrote
    sync = SYNC.replace("attributes:\n  plan: plan\n", f"attributes:\n  - plan\n  - {item}\n")
    err = validate_says(capsys, tmp_path, sync=sync)
    assert f"syncs/profile.yml:7: item 2 of the list is {shown}, not a column name" in err
    assert "write a mapping (`plan: {column: plan, type: string}`)" in err


def test_a_duckdb_model_of_two_queries_is_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # DuckDB runs each statement and gives the last one's rows: a test query left after the
    # model (`...; select 1`) failed as "primary key column `id` is not in the model ... the
    # model's columns are `1`"
    project(tmp_path, sync=SYNC.replace("{table: users}", "models/profile.sql"))
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "profile.sql"
    model.write_text("select id, email, plan from users;\nselect 1;\n")
    err = " ".join(fails(capsys, "plan", "profile", "--project", str(tmp_path)).split())
    assert (
        "duckdb source `warehouse`: the model's SQL holds 2 queries "
        "(`select id, email, plan from users`, `select 1`)"
    ) in err
    assert "keep the one query the sync reads" in err
    # a statement that sets something up before the one query is not a second query
    model.write_text("set timezone = 'UTC';\nselect id, email, plan from users;\n")
    main(["plan", "profile", "--project", str(tmp_path)])
    assert "rows in model" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("written", "said"),
    [
        # `[]` was "unexpected ParserException ... this is a bug in Lockgate" at `plan`
        ("primary_key: []", "syncs/profile.yml:5: `primary_key` is an empty list"),
        ('primary_key: ""', "syncs/profile.yml:5: `primary_key` names an empty column"),
        # a repeated column made keys such as `1|1`
        ("primary_key: [id, ID]", "syncs/profile.yml:5: `primary_key` names a column twice"),
        # each was `select * from`, or no query, at every run
        ('model: {table: ""}', "syncs/profile.yml:3: `table` is empty"),
        ('model: {sql: "  "}', "syncs/profile.yml:3: `sql` is empty"),
        ('model: ""', "syncs/profile.yml:3: `model` is empty"),
    ],
)
def test_an_empty_primary_key_or_model_is_refused_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], written: str, said: str
) -> None:
    key = written.split(":")[0]
    line = next(line for line in SYNC.splitlines() if line.startswith(f"{key}:"))
    err = validate_says(capsys, tmp_path, sync=SYNC.replace(line, written))
    assert said in err


def test_an_environment_reference_in_a_model_is_said_to_be_left_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `${...}` is expanded in lockgate.yml's settings, not in a model: the query failed at
    # "syntax error at or near `$`", which did not say why the variable was not read
    monkeypatch.setenv("USERS_TABLE", "users")
    project(tmp_path, sync=SYNC.replace("{table: users}", '{sql: "select * from ${USERS_TABLE}"}'))
    err = " ".join(fails(capsys, "plan", "profile", "--project", str(tmp_path)).split())
    assert "check the model's SQL (`select * from ${USERS_TABLE}`)" in err
    assert "`${USERS_TABLE}` is not expanded in a model" in err


@pytest.mark.parametrize(
    ("column", "kind", "pick"),
    [
        ("[id]", "INTEGER[]", "`tags[1] as tags`"),
        ("{'id': id}", "STRUCT(id INTEGER)", "`tags.id as tags`"),
    ],
)
def test_an_id_read_from_a_list_or_struct_column_is_refused_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str, kind: str, pick: str
) -> None:
    # each row was sent with the value's text as its id (`[1]`, `{'id': 1}`): a profile
    # nobody meant, where the sync file named the wrong column
    project(tmp_path, sync=SYNC.replace("{id: id, email: email}", "{id: tags}"))
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute(f"create or replace table users as select *, {column} as tags from users")
    err = " ".join(fails(capsys, "plan", "profile", "--project", str(tmp_path)).split())
    assert (
        f"syncs/profile.yml:6: sync `profile`: identifier `id` reads column `tags` of type {kind}, "
        "which holds several values; an id is one value"
    ) in err
    assert f"pick the one value in the model (e.g. {pick})" in err


def test_an_object_id_read_from_a_list_is_refused_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    companies = (
        "name: profile\nsource: warehouse\nmodel: {table: users}\nkind: objects\n"
        'object_type_id: "1"\nprimary_key: tags\nattributes: {plan: plan}\n'
    )
    project(tmp_path, sync=companies)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("create or replace table users as select *, [id] as tags from users")
    err = " ".join(fails(capsys, "plan", "profile", "--project", str(tmp_path)).split())
    assert (
        "syncs/profile.yml:6: sync `profile`: object id (`primary_key`) reads column `tags` of "
        "type INTEGER[], which holds several values"
    ) in err


def test_a_primary_key_or_identifier_the_model_lacks_is_named_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # both named the file without a line, where a field the model lacks had one
    project(tmp_path, sync=SYNC.replace("{id: id, email: email}", "{id: user_id}"))
    err = " ".join(fails(capsys, "plan", "profile", "--project", str(tmp_path)).split())
    assert "syncs/profile.yml:6: sync `profile`: identifier `id` reads column `user_id`" in err
    project(tmp_path, sync=SYNC.replace("primary_key: id", "primary_key: user_id"))
    err = " ".join(fails(capsys, "plan", "profile", "--project", str(tmp_path)).split())
    assert "syncs/profile.yml:5: sync `profile`: primary key column `user_id` is not" in err


EVENTS = """\
name: profile
source: warehouse
model: {table: users}
kind: events
identify_by: {id: id}
event: {name: plan, id: id, timestamp: signed_up}
"""


@pytest.mark.parametrize(
    ("event", "said"),
    [
        # each failed at `plan` without a line ("`event.name` needs a column or ...")
        ("{name: '', id: id}", "`event.name` names an empty column"),
        ("{name: plan, id: ' '}", "`event.id` names an empty column"),
        ("{name: plan, id: {hash: [id, '']}}", "`event.id.hash` names an empty column"),
        ("{name: plan, id: {hash: [id, ID]}}", "`event.id.hash` names a column twice"),
        # taken for no timestamp: every event sent as happening at the time of sending
        ("{name: plan, id: id, timestamp: ''}", "`event.timestamp` names an empty column"),
    ],
)
def test_an_event_naming_an_empty_column_is_refused_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], event: str, said: str
) -> None:
    sync = EVENTS.replace("{name: plan, id: id, timestamp: signed_up}", event)
    err = validate_says(capsys, tmp_path, sync=sync)
    assert f"syncs/profile.yml:6: {said}" in err


@pytest.mark.parametrize(
    ("sync", "line", "said"),
    [
        (
            EVENTS + "properties:\n  plan: {column: plan, on_null: clear}\n",
            8,
            "event property `plan` has `on_null: clear`",
        ),
        (EVENTS + "on_null: clear\nproperties: [plan]\n", 7, "`on_null: clear` is for attributes"),
        (
            SYNC + "on_change:\n  - attribute: plan\n    event: plan_changed\n"
            "    properties: {old: {column: email, on_null: clear}}\n",
            12,
            "event property `old` has `on_null: clear`",
        ),
    ],
    ids=["property", "sync", "on_change"],
)
def test_on_null_clear_on_an_event_property_is_refused_with_what_to_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sync: str, line: int, said: str
) -> None:
    """An event has no earlier value to clear: `on_null: clear` sent `""` for a null, a
    value the event seemed to carry. Refused at its line, saying how to leave the property
    out (the default) or send the empty string on purpose."""
    err = validate_says(capsys, tmp_path, sync=sync)
    assert f"syncs/profile.yml:{line}: {said}" in err
    assert "on_null: default, default: ''" in err


def test_a_sync_file_in_a_folder_under_syncs_is_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # only the files directly in `syncs/` were read: `validate` and `sync --all` said nothing
    # of `syncs/marketing/leads.yml`, whose sync never ran
    project(tmp_path)
    (tmp_path / "syncs" / "marketing").mkdir()
    (tmp_path / "syncs" / "marketing" / "leads.yml").write_text(
        SYNC.replace("name: profile", "name: leads").replace("plan: plan", "lead_plan: plan")
    )
    # a folder whose name starts with `.` holds copies (a notebook's checkpoints, `.git`)
    (tmp_path / "syncs" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "syncs" / ".ipynb_checkpoints" / "profile.yml").write_text(SYNC)
    main(["validate", "--json", "--project", str(tmp_path)])
    shown = json.loads(capsys.readouterr().out)
    assert sorted(shown["syncs"]) == ["leads", "profile"]
    main(["plan", "leads", "--project", str(tmp_path)])
    assert "rows in model" in capsys.readouterr().out


def test_an_editors_lock_swap_and_backup_files_under_syncs_are_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Emacs's lock file `.#profile.yml` (a link to nowhere), Vim's `.profile.yml.swp` and a
    backup `profile.yml~` sit next to the file being edited: `.#profile.yml` was read as a
    sync file and `validate` failed with "cannot read"."""
    project(tmp_path)
    syncs = tmp_path / "syncs"
    (syncs / ".#profile.yml").symlink_to("user@host.12345:1700000000")
    (syncs / ".profile.yml.swp").write_bytes(b"b0VIM 9.0\x00\xff")
    (syncs / "profile.yml~").write_text(SYNC)
    (syncs / "marketing").mkdir()
    (syncs / "marketing" / ".leads.yml").write_text("name: [unclosed\n")
    main(["validate", "--project", str(tmp_path)])
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert "profile" in said and "#" not in said and "swp" not in said and "~" not in said
    assert "leads" not in said and "cannot read" not in said
    main(["validate", "--json", "--project", str(tmp_path)])
    assert json.loads(capsys.readouterr().out)["syncs"] == ["profile"]


def test_two_sync_files_of_one_name_in_folders_under_syncs_are_both_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project(tmp_path)
    for folder in ("marketing", "sales"):
        (tmp_path / "syncs" / folder).mkdir()
        (tmp_path / "syncs" / folder / "leads.yml").write_text(
            SYNC.replace("name: profile", "name: leads")
        )
    err = " ".join(fails(capsys, "validate", "--project", str(tmp_path)).split())
    assert (
        "syncs/sales/leads.yml:1: sync name `leads` is used twice: in "
        "`syncs/marketing/leads.yml` and in `syncs/sales/leads.yml`"
    ) in err
    assert "rename one of them" in err


RELATIONSHIPS = """\
name: profile
source: warehouse
model: {table: users}
kind: relationships
object_type_id: "1"
identify_by: {id: id}
object_id: plan
"""


@pytest.mark.parametrize(
    ("sync", "written", "said"),
    [
        # passed `validate`, and every run failed at `plan`
        (SYNC, "identify_by: {id: ''}", "6: `identify_by.id` names an empty column"),
        (SYNC, "identify_by: {id: id, email: ' '}", "6: `identify_by.email` names an empty"),
        (RELATIONSHIPS, "object_id: ''", "7: `object_id` names an empty column"),
        # each read the column of the field's own name, and a run sent it without a word
        (SYNC, "  plan: {column: ''}", "8: the field names an empty column"),
        (SYNC, "  plan: ''", "8: the field names an empty column"),
        (EVENTS, "event: {name: plan, id: id}\nproperties: {p: ''}", "7: the field names an"),
        (RELATIONSHIPS, "object_id: plan\nrelationship_attributes: {role: ''}", "8: the field"),
        # an `unless: ''` was taken for none: the event fired on every change
        (
            SYNC,
            "  plan: plan\non_change:\n  - {attribute: plan, event: Plan Changed, unless: ''}",
            "10: `unless` is empty",
        ),
        (
            SYNC,
            "  plan: plan\non_change:\n  - {attribute: ' ', event: Plan Changed}",
            "10: `attribute` is empty",
        ),
        (
            SYNC,
            "  plan: plan\non_change:\n  - {attribute: plan, event: X, properties: {p: ''}}",
            "10: the field names an empty column",
        ),
    ],
)
def test_an_empty_column_name_is_refused_by_validate_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sync: str, written: str, said: str
) -> None:
    key = written.split(":")[0]
    line = next(line for line in sync.splitlines() if line.startswith(f"{key}:"))
    err = validate_says(capsys, tmp_path, sync=sync.replace(line, written))
    assert f"syncs/profile.yml:{said}" in err


@pytest.mark.parametrize(
    ("written", "said"),
    [
        # a blank `observed_at` or `key` was taken for none: links unordered, rows numbered
        ("observed_at: ''", "`observed_at` is empty"),
        ("key: ' '", "`key` is empty"),
        ("columns: {'': email}", "`columns` maps an empty column name"),
    ],
)
def test_an_identity_source_naming_an_empty_column_is_refused_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], written: str, said: str
) -> None:
    identity = f"identity:\n  sources:\n    - name: crm\n      table: users\n      {written}\n"
    err = validate_says(capsys, tmp_path, PROJECT + identity)
    assert f"lockgate.yml:10: {said}" in err


def test_an_on_change_rule_watching_an_attribute_the_sync_lacks_is_named_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # named the sync file without a line
    sync = SYNC + "on_change:\n  - {attribute: plam, event: Plan Changed}\n"
    project(tmp_path, sync=sync)
    err = " ".join(fails(capsys, "plan", "profile", "--project", str(tmp_path)).split())
    assert (
        "syncs/profile.yml:10: sync `profile`: `on_change[0].attribute` watches `plam`, which is "
        "not one of the sync's attributes"
    ) in err


def test_an_empty_column_name_in_a_list_of_attributes_is_refused_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # was "attribute name is empty", the name made of the column written: true, but not the fix
    sync = SYNC.replace("attributes:\n  plan: plan\n", "attributes: [plan, '']\n")
    err = validate_says(capsys, tmp_path, sync=sync)
    assert "syncs/profile.yml:7: item 2 of the list is an empty column name" in err


def test_a_backfill_max_age_of_zero_is_refused_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # every event is older than 0h: each run held back every event, as backfill
    sync = EVENTS + "backfill: {max_age: 0h}\n"
    err = validate_says(capsys, tmp_path, sync=sync)
    assert "syncs/profile.yml:7: `max_age: 0h` makes every event older than the limit" in err


def test_a_rate_limit_of_zero_is_refused_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # was "step `destination` failed ...: rate limit must be positive, got `0.0`", no line
    yml = PROJECT + "destinations:\n  customerio:\n    type: customerio\n    rate_limit: 0/s\n"
    err = validate_says(capsys, tmp_path, yml)
    assert "lockgate.yml:9: `0/s` sends nothing; write a rate above 0, e.g. `100/s`" in err


def test_a_default_its_null_policy_never_sends_is_a_warning_of_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `default: free` without `on_null: default`: each null was skipped, the default never
    # sent, and nothing said so
    sync = SYNC.replace("  plan: plan\n", "  plan: {column: plan, default: free}\n")
    project(tmp_path, sync=sync)
    main(["validate", "--json", "--project", str(tmp_path)])
    shown = json.loads(capsys.readouterr().out)
    assert shown["valid"] is True
    assert [(f["check"], f["level"], f["files"]) for f in shown["contract"]] == [
        ("unused default", "warning", ["syncs/profile.yml"])
    ]
    assert shown["contract"][0]["message"] == (
        'sync `profile`: attribute `plan` has `default: "free"`, which is never sent: its null '
        "policy is `skip` (the sync's), so a null is not sent. To send the default for a null, "
        "set `on_null: default` on `plan`; otherwise remove `default`"
    )
    # with the policy that sends it, nothing to say
    project(tmp_path, sync=sync.replace("default: free}", "default: free, on_null: default}"))
    main(["validate", "--json", "--project", str(tmp_path)])
    assert json.loads(capsys.readouterr().out)["contract"] == []
