"""Project files: clear errors with file and line, secrets only from the environment."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import yaml

from lockgate.errors import ConfigError
from lockgate.project.loader import load_project, read_yaml
from lockgate.sources import connect

PROJECT = """\
name: acme
sources:
  warehouse: {type: duckdb, path: w.duckdb}
"""

SYNC = """\
name: profile
source: warehouse
model: models/profile.sql
kind: people
primary_key: id
identify_by: {id: id}
attributes:
  plan: plan
"""


def write(root: Path, project: str = PROJECT, sync: str = SYNC) -> Path:
    (root / "syncs").mkdir(exist_ok=True)
    (root / "lockgate.yml").write_text(project)
    (root / "syncs" / "profile.yml").write_text(sync)
    return root


def error_for(root: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_project(root)
    return caught.value


def test_a_valid_project_loads(tmp_path: Path) -> None:
    project = load_project(write(tmp_path))
    sync = project.sync("profile")
    assert sync.kind == "people" and sync.attributes["plan"].column == "plan"
    assert project.config.destinations["customerio"].site_id == "${CUSTOMERIO_SITE_ID}"


def test_unknown_key_names_file_and_line(tmp_path: Path) -> None:
    error = error_for(write(tmp_path, sync=SYNC.replace("attributes:", "atributes:")))
    assert error.location == "syncs/profile.yml:7"
    assert "unknown key `atributes`" in error.reason


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    error = error_for(write(tmp_path, sync=SYNC + "mode: sometimes\n"))
    assert error.location == "syncs/profile.yml:9"
    assert "`mode`" in error.reason


def test_literal_secret_is_refused(tmp_path: Path) -> None:
    project = PROJECT + "destinations:\n  customerio:\n    type: customerio\n    api_key: abc123\n"
    error = error_for(write(tmp_path, project=project))
    assert error.location == "lockgate.yml:7"
    assert "environment reference" in error.reason
    assert "abc123" not in str(error)


def test_a_literal_app_api_key_names_its_own_key_and_variable(tmp_path: Path) -> None:
    project = PROJECT + (
        "destinations:\n  customerio:\n    type: customerio\n    app_api_key: sa_live_k\n"
    )
    error = error_for(write(tmp_path, project=project))
    assert error.location == "lockgate.yml:7"
    # the path is the keys as written: not `destinations.customerio.customerio.app_api_key`
    assert error.reason == (
        "`app_api_key` must be an environment reference like `${CUSTOMERIO_APP_API_KEY}`, not a "
        "literal secret; put the value in the environment "
        "(at `destinations.customerio.app_api_key`)"
    )
    assert "sa_live_k" not in str(error)


def test_an_error_path_holds_the_keys_of_the_file_not_the_type_tag(tmp_path: Path) -> None:
    bad = PROJECT.replace("path: w.duckdb}", "path: w.duckdb, memory: 1GB}")
    error = error_for(write(tmp_path, project=bad))
    assert error.location == "lockgate.yml:3"
    assert error.reason == "unknown key `memory` (at `sources.warehouse.memory`)"
    assert error.hint is not None and error.hint.startswith("did you mean `memory_limit`?")
    bad = PROJECT.replace("path: w.duckdb}", "path: w.duckdb, read_only: maybe}")
    error = error_for(write(tmp_path, project=bad))
    assert error.reason.endswith("(at `sources.warehouse.read_only`)")


def test_a_destination_url_without_a_scheme_is_refused_where_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Track URL the HTTP client cannot use was retried as a network error for minutes; it is
    a config error naming the line, and an env reference is read from the environment."""
    head = PROJECT + "destinations:\n  customerio:\n    type: customerio\n"
    error = error_for(write(tmp_path, project=head + "    track_url: 127.0.0.1:8765\n"))
    assert error.location == "lockgate.yml:7"
    assert "`127.0.0.1:8765` is not an http(s) URL" in error.reason

    from lockgate.sync.run import destination_settings

    project = load_project(write(tmp_path, project=head + "    track_url: ${MY_TRACK}\n"))
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", "site")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "key")
    monkeypatch.setenv("MY_TRACK", "http://127.0.0.1:8765")
    settings = destination_settings(project, "customerio")
    assert settings.track_url == settings.app_url == "http://127.0.0.1:8765"
    monkeypatch.setenv("MY_TRACK", "localhost:8765")
    with pytest.raises(ConfigError, match=r"`\$\{MY_TRACK\}` \(`track_url` in lockgate.yml\)"):
        destination_settings(project, "customerio")


def test_duplicate_keys_and_unknown_sources_are_errors(tmp_path: Path) -> None:
    error = error_for(write(tmp_path, sync=SYNC + "kind: events\n"))
    assert error.location == "syncs/profile.yml:9" and "duplicate key `kind`" in error.reason
    error = error_for(write(tmp_path, sync=SYNC.replace("source: warehouse", "source: snow")))
    assert "source `snow`" in error.reason and error.location == "syncs/profile.yml:2"


def test_identity_and_webhooks_naming_an_undeclared_source_are_errors_at_their_line(
    tmp_path: Path,
) -> None:
    # found by `lockgate validate`, not by the run that reads them after extracting the model
    identity = PROJECT + (
        "identity:\n"
        "  identifier_types: {user_id: {priority: 1}}\n"
        "  sources:\n"
        "    - {name: crm, source: warehous, table: crm.contacts}\n"
    )
    error = error_for(write(tmp_path, project=identity))
    assert error.location == "lockgate.yml:7"
    assert error.reason == (
        "identity source `crm` reads from source `warehous`, which lockgate.yml does not declare "
        "under `sources:`"
    )
    assert error.hint == "did you mean `warehouse`? (declared sources: `warehouse`)"

    error = error_for(write(tmp_path, project=PROJECT + "webhooks:\n  warehouse: nowhere\n"))
    assert error.location == "lockgate.yml:5"
    assert error.reason.startswith("`webhooks.warehouse` names source `nowhere`, which")
    assert error.hint == "declared sources: `warehouse`"


MERGED = """\
base: &base {column: plan, type: string, on_null: skip}
more: &more {type: integer, default: 0}
one: {<<: *base, on_null: clear}
two:
  on_null: clear
  <<: [*more, *base]
nested:
  <<: {inner: {a: 1}, b: 2}
  b: 3
"""


def test_yaml_merge_keys_read_as_safe_load_reads_them(tmp_path: Path) -> None:
    (tmp_path / "m.yml").write_text(MERGED)
    data, lines = read_yaml(tmp_path / "m.yml")
    # PyYAML's pick between two merged mappings holding one key depends on string interning:
    # the YAML spec's (the earlier one wins) is the one read, the rest as safe_load reads it
    expected = yaml.safe_load(MERGED)
    expected["two"]["type"] = "integer"
    assert data == expected
    assert [list(v) for v in data.values()] == [list(v) for v in expected.values()]
    # a key written here is at its own line; a merged one where the anchor writes it
    assert lines[("one", "on_null")] == 3 and lines[("one", "column")] == 1
    assert lines[("two", "type")] == 2 and lines[("nested", "inner", "a")] == 8


def test_a_sync_may_merge_an_anchored_attribute_and_errors_name_the_line(tmp_path: Path) -> None:
    sync = SYNC.replace(
        "  plan: plan\n", "  plan: &text {column: plan, type: string}\n  copy: {<<: *text}\n"
    )
    project = load_project(write(tmp_path, sync=sync))
    copy = project.sync("profile").attributes["copy"]
    assert (copy.column, copy.type) == ("plan", "string")
    # a bad merged value is reported where the anchored mapping writes it
    error = error_for(write(tmp_path, sync=sync.replace("type: string", "type: text")))
    assert error.location == "syncs/profile.yml:8"
    error = error_for(write(tmp_path, sync=sync.replace("{<<: *text}", "{<<: plan}")))
    assert error.location == "syncs/profile.yml:9"
    assert error.reason.startswith("`<<` merges a mapping into this one")


def test_invalid_yaml_points_at_the_line(tmp_path: Path) -> None:
    error = error_for(write(tmp_path, sync=SYNC + "  - [unclosed\n"))
    assert error.file == "syncs/profile.yml" and error.line is not None


def test_a_file_not_in_utf8_is_refused_at_its_line(tmp_path: Path) -> None:
    """A sync file saved as Latin-1 (`café` in a comment) stopped every command with a bare
    UnicodeDecodeError, and `lockgate schedule`, reloading it between rounds, stopped for
    good instead of keeping the last good project."""
    write(tmp_path)
    (tmp_path / "syncs" / "profile.yml").write_bytes(SYNC.encode() + b"# caf\xe9\n")
    error = error_for(tmp_path)
    assert error.location == "syncs/profile.yml:9"
    assert error.reason == "the file is not UTF-8 text (byte 0xe9)"
    assert "save the file as UTF-8" in (error.hint or "")

    (tmp_path / "syncs" / "profile.yml").write_text(SYNC)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "profile.sql").write_bytes(b"select 1 as id,\n'caf\xe9' as plan\n")
    project = load_project(tmp_path)
    with pytest.raises(ConfigError) as caught:
        project.model_sql(project.sync("profile"))
    assert caught.value.location == "models/profile.sql:2"
    assert caught.value.reason.startswith("sync `profile`: its model file is not UTF-8 text")


@pytest.mark.parametrize(
    ("schedule", "said"),
    [
        ("0 0 30 2 *", "`0 0 30 2 *` is never due: no month has that day (e.g. February 30)"),
        ("0 0 31 4,6 *", "`0 0 31 4,6 *` is never due"),
        # a seventh field is a year to croniter: the schedule ends, and the scheduler with it
        ("0 0 * * * 0 2020", "`0 0 * * * 0 2020` is not a cron expression"),
        ("0 0 * * * 0 2020-2099", "`0 0 * * * 0 2020-2099` is not a cron expression"),
    ],
)
def test_a_schedule_that_is_never_due_or_ends_is_refused(
    tmp_path: Path, schedule: str, said: str
) -> None:
    """`lockgate schedule` stopped on these with an internal error (croniter's
    CroniterBadDateError): at start, at a reload of an edited file, or at the last slot."""
    error = error_for(write(tmp_path, sync=SYNC + f'schedule: "{schedule}"\n'))
    assert error.location == "syncs/profile.yml:9"
    assert error.reason.startswith(said)
    # what the docs call valid still is: five fields, six with seconds, a 29 February
    for fine in ("*/15 * * * *", "* * * * * */30", "0 0 29 2 *", "@hourly"):
        sync = load_project(write(tmp_path, sync=SYNC + f'schedule: "{fine}"\n')).sync("profile")
        assert sync.schedule == fine


def test_duckdb_memory_limit_must_be_a_size(tmp_path: Path) -> None:
    bad = PROJECT.replace("path: w.duckdb}", "path: w.duckdb, memory_limit: lots}")
    error = error_for(write(tmp_path, project=bad))
    assert error.location == "lockgate.yml:3"
    assert "`lots` is not a memory size" in error.reason


def test_duckdb_memory_limit_reaches_the_source(tmp_path: Path) -> None:
    duckdb.connect(str(tmp_path / "w.duckdb")).close()
    good = PROJECT.replace("path: w.duckdb}", "path: w.duckdb, memory_limit: 1GB}")
    project = load_project(write(tmp_path, project=good))
    source = connect(project.config.sources["warehouse"], root=project.root, name="warehouse")
    try:
        reader = source.read("select current_setting('memory_limit') as m")
        limit = [row["m"] for batch in reader for row in batch.to_pylist()]
        reader.close()
    finally:
        source.close()
    assert limit in (["953.6 MiB"], ["1.0 GiB"], ["1000.0 MB"])


def test_the_region_in_lockgate_yml_wins_over_customerio_region(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`region:` in lockgate.yml is what a run uses (as `track_url` wins over its variable);
    without it, `CUSTOMERIO_REGION` in any case, an empty one meaning unset; a value that is
    no region is an error naming the variable."""
    from lockgate.project.models import CustomerIODestinationConfig

    monkeypatch.setenv("CUSTOMERIO_REGION", "us")
    assert CustomerIODestinationConfig(region="eu").region_to_use() == "eu"
    monkeypatch.setenv("CUSTOMERIO_REGION", " EU ")
    assert CustomerIODestinationConfig().region_to_use() == "eu"
    monkeypatch.setenv("CUSTOMERIO_REGION", "")
    assert CustomerIODestinationConfig().region_to_use() == "us"
    monkeypatch.setenv("CUSTOMERIO_REGION", "europe")
    with pytest.raises(ConfigError, match="`CUSTOMERIO_REGION` is `europe`, which is not a"):
        CustomerIODestinationConfig().region_to_use()


def test_on_null_default_for_a_sync_needs_a_default_on_each_field(tmp_path: Path) -> None:
    # a field without a `default` sent its nulls as JSON `null` (which Customer.io does not
    # take as a value); a field's own `on_null: default` without one was already refused
    two = SYNC + "  tier: {column: tier, default: basic}\n  seats: seats\n"
    error = error_for(write(tmp_path, sync=two + "on_null: default\n"))
    assert error.location == "syncs/profile.yml:11"
    assert error.reason == (
        "sync `profile`: `on_null: default` sends each field's `default` for a null, and "
        "`plan`, `seats` have none"
    )
    assert "`plan: {column: plan, default: ...}`), or its own `on_null`" in str(error.hint)
    # lockgate.yml's `defaults.on_null` is named where it is written
    error = error_for(write(tmp_path, PROJECT + "defaults:\n  on_null: default\n", two))
    assert error.location == "lockgate.yml:5" and "`plan`, `seats` have none" in error.reason
    # with a default (or an `on_null` of its own) on each field, the sync loads
    fixed = SYNC.replace("plan: plan", "plan: {column: plan, on_null: skip}")
    fixed += "  tier: {column: tier, default: basic}\non_null: default\n"
    assert load_project(write(tmp_path, sync=fixed)).sync("profile").on_null == "default"


@pytest.mark.parametrize(
    ("project", "sync", "where", "line"),
    [
        # the state went into the project folder itself
        (PROJECT + "state: ''\n", SYNC, "`state` is empty", 4),
        (PROJECT.replace("path: w.duckdb", "path: ''"), SYNC, "`sources.warehouse.path`", 3),
        (PROJECT + "  '': {type: duckdb, path: x.duckdb}\n", SYNC, "`sources` holds an entry", 4),
        (PROJECT + "destinations:\n  ' ': {type: customerio}\n", SYNC, "`destinations` hold", 5),
        (PROJECT + "webhooks:\n  dataset: ''\n", SYNC, "`webhooks.dataset` is empty", 5),
        (PROJECT + "alerts:\n  - url: ${HOOK}\n    syncs: ['']\n", SYNC, "item 1 of", 6),
        (PROJECT + "identity:\n  blocked_values_table: ' '\n", SYNC, "blocked_values_table", 5),
        (PROJECT, SYNC + "destination: ''\n", "`destination` is empty", 9),
        (PROJECT, SYNC.replace("{id: id}", "{id: id, '': email}"), "`identify_by` holds", 6),
    ],
    ids=["state", "path", "source", "destination", "dataset", "alert", "table", "to", "type"],
)
def test_an_empty_name_or_value_is_refused_at_its_line(
    tmp_path: Path, project: str, sync: str, where: str, line: int
) -> None:
    """An empty value was taken as written: `state: ''` put the state in the project folder
    itself, a DuckDB `path: ''` or a source named `''` failed only when a command used it."""
    error = error_for(write(tmp_path, project, sync))
    assert where in error.reason and "empty" in error.reason
    file = "lockgate.yml" if project != PROJECT else "syncs/profile.yml"
    assert error.location == f"{file}:{line}"


def test_an_empty_value_hints_at_its_default(tmp_path: Path) -> None:
    error = error_for(write(tmp_path, PROJECT + "state: ''\n"))
    assert error.hint == "write a value, or leave `state` out for its default (`.lockgate`)"


def test_a_webhooks_dataset_dlt_would_rename_is_refused_at_its_line(tmp_path: Path) -> None:
    """dlt loads `webhooks.dataset: cio-events` into `cio_events`: the engagement model
    `lockgate webhooks` writes (and the user's own SQL) read `cio-events`, which is not there."""
    error = error_for(write(tmp_path, PROJECT + "webhooks:\n  dataset: cio-events\n"))
    assert "`cio-events` is not a plain SQL name" in error.reason and "`cio_events`" in error.reason
    assert error.location == "lockgate.yml:5"
