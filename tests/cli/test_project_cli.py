"""`lockgate init`, `validate`, `plan`, `sync`, `runs`, `history` from the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lockgate.cli import cli, main
from lockgate.cli.project import json_schemas
from lockgate.demo import warehouse
from lockgate.emulator import Emulator
from lockgate.errors import ConfigError
from lockgate.project.loader import load_project, read_yaml


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False, standalone_mode=False)
    return result.exit_code, result.output


def demo_project(
    root: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, **build: int
) -> tuple[str, str]:
    """`lockgate init` with the demo warehouse, pointed at the emulator: the `--project` args."""
    site, key = emulator.track_auth
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", site)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", key)
    monkeypatch.setenv("CUSTOMERIO_TRACK_URL", emulator.base_url or "")
    invoke("init", str(root))
    warehouse.build(root / "warehouse.duckdb", **build)
    return ("--project", str(root))


def test_init_then_validate(tmp_path: Path) -> None:
    code, out = invoke("init", str(tmp_path / "p"))
    assert code == 0 and "lockgate.yml" in out
    assert (tmp_path / "p" / "syncs" / "customer_profile.yml").exists()
    schema = json.loads((tmp_path / "p" / ".lockgate-schema" / "sync.schema.json").read_text())
    assert "identify_by" in schema["properties"]
    # editors show each key's docstring from the models as its description, nested ones too
    assert schema["properties"]["mode"]["description"].startswith("`upsert` creates and updates")
    field = schema["$defs"]["FieldConfig"]["properties"]["on_null"]
    assert field["description"].startswith("What a null does")
    project = json.loads((tmp_path / "p" / ".lockgate-schema" / "project.schema.json").read_text())
    assert project["$defs"]["IdentityConfig"]["properties"]["identifier_types"]["description"]
    code, out = invoke("validate", "--project", str(tmp_path / "p"), "--json")
    report = json.loads(out)
    assert report["valid"] and report["syncs"] == [
        "billing",
        "companies",
        "customer_profile",
        "leads",
        "memberships",
        "product_events",
    ]
    assert "CUSTOMERIO_API_KEY" in report["missing_env"]
    # every `${VAR}` the file names is checked, not only the credentials: an alert's URL too,
    # which a failed run would otherwise find missing only when it needed the alert
    yml = tmp_path / "p" / "lockgate.yml"
    yml.write_text(yml.read_text() + "alerts:\n  - url: ${LOCKGATE_TEST_ALERT_URL}\n")
    code, out = invoke("validate", "--project", str(tmp_path / "p"), "--json")
    assert "LOCKGATE_TEST_ALERT_URL" in json.loads(out)["missing_env"]
    code, out = invoke("validate", "--project", str(tmp_path / "p"))
    assert "`LOCKGATE_TEST_ALERT_URL` (for `alerts[0].url`) is not set" in " ".join(out.split())


def schema_errors(schema: dict[str, object], path: Path) -> list[str]:
    """What an editor's JSON Schema check says of a file, read as an editor (YAML) and as
    Lockgate reads it."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    found = []
    for data in (yaml.safe_load(path.read_text()), read_yaml(path)[0]):
        found += [
            f"{path.name}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(data)
        ]
    return found


def test_the_editor_schemas_take_every_file_init_writes_and_what_validate_takes(
    tmp_path: Path,
) -> None:
    # the schemas `init` writes for editors must not flag the scaffold's own shorthands
    # (`attr: column`, `model: file.sql`, `event: {name: col}`, `properties: [a, b]`,
    # `max_changed: off`) while `lockgate validate` takes them
    root = tmp_path / "p"
    assert invoke("init", str(root))[0] == 0
    schemas = root / ".lockgate-schema"
    project = json.loads((schemas / "project.schema.json").read_text())
    sync = json.loads((schemas / "sync.schema.json").read_text())
    assert {"lockgate.yml": project, "syncs/*.yml": sync} == json_schemas()
    written = sorted((root / "syncs").glob("*.yml"))
    assert len(written) == 6
    errors = schema_errors(project, root / "lockgate.yml")
    for path in written:
        errors += schema_errors(sync, path)
    assert errors == []

    # shorthands the scaffold does not use: one of each, taken by both
    lockgate_yml = (root / "lockgate.yml").read_text()
    (root / "lockgate.yml").write_text(
        lockgate_yml.replace('sql: "select email from marketing.leads"', 'query: "select 1"')
    )
    (root / "syncs" / "more.yml").write_text(
        "name: more\nsource: warehouse\nmodel: analytics.companies\nkind: objects\n"
        "primary_key: company_id\nobject_type_id: 1\nattributes: [name, industry]\n"
        "on_change:\n  - {attribute: name, event: renamed, properties: [industry]}\n"
        "guardrails: {max_changed: 10, max_removed: off, max_events: off}\n"
    )
    assert load_project(root).sync("more").object_type_id == "1"
    errors = schema_errors(project, root / "lockgate.yml")
    errors += schema_errors(sync, root / "syncs" / "more.yml")
    assert errors == []

    # and refuse what validate refuses: a source or destination without `type`
    no_type = lockgate_yml.replace("    type: duckdb\n", "")
    (root / "lockgate.yml").write_text(no_type)
    with pytest.raises(ConfigError, match="`sources.warehouse` has no `type`"):
        load_project(root)
    assert schema_errors(project, root / "lockgate.yml")
    no_type = lockgate_yml.replace("    type: customerio\n", "")
    (root / "lockgate.yml").write_text(no_type)
    assert schema_errors(project, root / "lockgate.yml")


def test_init_with_sample_data_syncs_into_the_emulator_as_its_hint_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lockgate init --sample-data` builds the warehouse its syncs read and says how to try
    them against `lockgate emulator`: the exports it prints (the emulator's own credentials)
    are enough for `sync --all` to fill a workspace, new people's emails checked through the
    App API."""
    root = tmp_path / "p"
    code, out = invoke("init", str(root), "--sample-data")
    assert code == 0 and (root / "warehouse.duckdb").exists()
    exports = [line.split()[1] for line in out.splitlines() if line.strip().startswith("export")]
    assert len(exports) == 4
    emulator = Emulator()  # as `lockgate emulator` starts it, on a free port here
    with emulator.serve() as url:
        for name, value in (pair.split("=", 1) for pair in exports):
            monkeypatch.setenv(name, url if name == "CUSTOMERIO_TRACK_URL" else value)
        code, out = invoke("sync", "--all", "--project", str(root), "--json")
    assert code == 0, out
    runs = {run["sync"]: run for run in json.loads(out)}
    assert {run["status"] for run in runs.values()} == {"success"}
    assert len(emulator.people()) > 100 and emulator.events() and emulator.objects()
    assert runs["customer_profile"]["new_emails_checked"] > 100


def test_records_customerio_never_answered_are_one_line_of_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Customer.io unreachable: every record dead-letters with the same reason. The report
    says it once, with how many records and which, and that the next run sends them again;
    the run exits 2 (partial)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    project = demo_project(tmp_path, Emulator(), monkeypatch, users=30)
    monkeypatch.setenv("CUSTOMERIO_TRACK_URL", f"http://127.0.0.1:{port}")
    config = tmp_path / "lockgate.yml"
    limit = "    rate_limit: 100/s\n"
    config.write_text(config.read_text().replace(limit, limit + "    max_retries: 0\n"))
    result = CliRunner().invoke(cli, ["sync", "customer_profile", *project])
    assert result.exit_code == 2, result.output
    out = result.output
    found = re.search(r"records not delivered \(the first 20 of (\d+)\)", out)
    assert found is not None and int(found.group(1)) >= 30, out
    assert out.count("dead_letter") == 1  # one line for the one reason
    assert f"{found.group(1)} records not delivered are not in the snapshot: the next" in out


def test_validate_error_exits_non_zero_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lockgate.cli import main

    invoke("init", str(tmp_path))
    sync_file = tmp_path / "syncs" / "product_events.yml"
    sync_file.write_text(sync_file.read_text().replace("kind: events", "kind: evnets"))
    with pytest.raises(SystemExit) as exited:
        main(["validate", "--project", str(tmp_path)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "syncs/product_events.yml:" in err and "hint:" in err


@pytest.mark.parametrize("command", ["plan", "sync"])
def test_plan_or_sync_without_a_name_lists_the_syncs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    from lockgate.cli import main

    invoke("init", str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        main([command, "--project", str(tmp_path)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "name a sync, or pass `--all`" in err and "billing, companies, customer_profile" in err


@pytest.mark.parametrize("command", ["plan", "sync"])
def test_sync_names_and_all_together_are_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """`--all` with a name (a misspelt one here) used to drop the name unread and run every
    sync; now nothing runs and the message says which of the two to drop."""
    from lockgate.cli import main

    invoke("init", str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        main([command, "customer_profil", "--all", "--project", str(tmp_path)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "name syncs (`customer_profil`) or pass `--all`, not both" in err
    assert "billing, companies, customer_profile" in err
    assert not (tmp_path / ".lockgate").exists()  # no run started, no state made


def test_every_long_step_of_a_plan_shows_progress(
    tmp_path: Path,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Extract counts the rows read; resolving identities and the diff count nothing but still
    show that they are running (with their elapsed time), so a long step never looks stuck."""
    from lockgate.cli import main

    # bars are drawn on a terminal only: be one that redraws them
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    monkeypatch.setenv("TERM", "xterm")
    project = demo_project(tmp_path, customerio_emulator, monkeypatch, users=50)
    main(["plan", "customer_profile", *project])
    err = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().err)  # the terminal's codes
    lines = {line.split("━")[0].strip(): line for line in err.splitlines() if "━" in line}
    assert set(lines) == {
        "extract customer_profile",
        "resolve identities customer_profile",
        "diff customer_profile",
    }
    assert "53 0:00:0" in lines["extract customer_profile"]  # rows read, no unknown total
    assert "/?" not in err


def test_a_failed_step_names_the_cause_and_its_hint_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lockgate.cli import main

    invoke("init", str(tmp_path))  # no warehouse built: the extract step fails
    with pytest.raises(SystemExit) as exited:
        main(["plan", "customer_profile", "--project", str(tmp_path)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "step `extract` failed" in err and "warehouse.duckdb` does not exist" in err
    assert err.count("hint:") == 1 and "check `path` in lockgate.yml" in err


def test_a_model_sql_error_quotes_the_query_not_its_comments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lockgate.cli import main

    invoke("init", str(tmp_path))
    warehouse.build(tmp_path / "warehouse.duckdb")
    model = tmp_path / "models" / "customer_profile.sql"
    assert model.read_text().startswith("--")  # the scaffold's model opens with a comment
    model.write_text(model.read_text().replace("select", "selec", 1))
    with pytest.raises(SystemExit):
        main(["plan", "customer_profile", "--project", str(tmp_path)])
    err = capsys.readouterr().err
    assert 'syntax error at or near "selec"' in err
    assert "check the model's SQL (`selec " in err


def test_plan_all_plans_the_other_syncs_when_one_is_broken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lockgate.cli import main

    invoke("init", str(tmp_path), "--sample-data")
    model = tmp_path / "models" / "customer_profile.sql"
    model.write_text(model.read_text().replace("select", "selec", 1))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["plan", "--all", "--project", str(tmp_path), "--json"])
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    plans = {p["sync"]: p for p in json.loads(out)}
    assert len(plans) == 6 and plans["customer_profile"]["status"] == "failed"
    assert "selec" in plans["customer_profile"]["error"]
    assert {p["status"] for n, p in plans.items() if n != "customer_profile"} == {"planned"}
    assert "1 of 6 plans failed: customer_profile" in err


def test_json_prints_a_document_when_the_only_sync_or_the_files_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a script reads stdout of `--json`: an error is a document there too, not nothing
    from lockgate.cli import main

    def run(*args: str) -> tuple[int, object, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main([*args, "--project", str(tmp_path), "--json"])
        out, err = capsys.readouterr()
        return int(exited.value.code or 0), json.loads(out), err

    monkeypatch.setenv("CUSTOMERIO_SITE_ID", "site")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "key")
    monkeypatch.setenv("CUSTOMERIO_TRACK_URL", "http://127.0.0.1:9")  # nothing listens there
    invoke("init", str(tmp_path), "--sample-data")
    leads = tmp_path / "syncs" / "leads.yml"
    leads.write_text(leads.read_text().replace("marketing.leads", "marketing.nosuch"))

    # the only sync named fails: the same list `sync A B` prints, with its error
    code, runs, err = run("sync", "leads")
    assert code == 1 and "Error: step `extract` failed" in err
    assert isinstance(runs, list) and [(r["sync"], r["status"]) for r in runs] == [
        ("leads", "failed")
    ]
    assert "marketing.nosuch" in runs[0]["error"]
    # `plan ONE --json` prints one report, so its failure is one document
    code, planned, err = run("plan", "leads")
    assert code == 1 and isinstance(planned, dict)
    assert (planned["sync"], planned["status"]) == ("leads", "failed")

    # a file error: `validate --json` says `valid: false` with the error (file and line)
    leads.write_text(leads.read_text().replace("kind: people", "kind: person"))
    code, report, err = run("validate")
    assert code == 1 and "Error: syncs/leads.yml:5:" in err
    assert isinstance(report, dict)
    assert report["valid"] is False and report["error"].startswith("syncs/leads.yml:5: ")
    assert (report["syncs"], report["contract"]) == ([], [])
    # ... and `sync --all --json` names no sync, as none could be read
    code, runs, err = run("sync", "--all")
    assert code == 1 and isinstance(runs, list) and len(runs) == 1
    assert (runs[0]["sync"], runs[0]["status"]) == (None, "failed")
    assert runs[0]["error"].startswith("syncs/leads.yml:5: ")
    # every other `--json` command prints one document too: `{"status": "failed", "error"}`
    for command in (
        ["runs"],
        ["runs", "show"],
        ["runs", "export"],
        ["history", "--person", "ada@example.com"],
        ["sources", "inspect"],
        ["reconcile", "leads"],
        ["identity", "explain", "ada@example.com"],
        ["webhooks", "status"],
        ["webhooks", "load"],
    ):
        code, doc, err = run(*command)
        assert code == 1 and "Error: syncs/leads.yml:5:" in err, command
        assert isinstance(doc, dict) and doc["status"] == "failed", command
        assert doc["error"].startswith("syncs/leads.yml:5: "), command
    # `--json` given to the group (`runs --json show`) is honoured the same way
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["runs", "--json", "show", "--project", str(tmp_path)])
    assert json.loads(capsys.readouterr().out)["status"] == "failed"


def test_plan_sync_runs_history_end_to_end(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = demo_project(tmp_path, customerio_emulator, monkeypatch)

    code, out = invoke("plan", "customer_profile", *project, "--json")
    plan = json.loads(out)
    assert plan["changes"]["new"] == 999 and plan["changes"]["rejected"] == 4
    assert plan["samples"][0]["payload"]["action"] == "identify"
    assert customerio_emulator.people() == []
    # every sync's plan, in the order `sync --all` runs them: a list of the same reports
    code, out = invoke("plan", "--all", *project, "--json")
    plans = {p["sync"]: p for p in json.loads(out)}
    assert plans["customer_profile"]["changes"] == plan["changes"]
    assert customerio_emulator.people() == []

    code, out = invoke("sync", "--all", *project, "--json")
    runs = json.loads(out)
    assert [(r["sync"], r["status"]) for r in runs] == [
        ("companies", "success"),
        ("billing", "success"),
        ("customer_profile", "success"),
        ("leads", "success"),
        ("memberships", "success"),
        ("product_events", "success"),
    ]
    assert len(customerio_emulator.people()) == 1003  # 1000 users + 3 marketing leads
    # each sync sent what its plan said, and nothing is left: the memberships whose people
    # and companies the syncs before them in the command create are planned as sent (the
    # plan of each sync sees what the earlier ones would commit), but the one of a rejected
    # person, held
    sent = {r["sync"]: (r["changes"]["to_send"], r["changes"]["held"]) for r in runs}
    planned = {name: (p["changes"]["to_send"], p["changes"]["held"]) for name, p in plans.items()}
    assert planned == sent and planned["memberships"] == (1000, 1)
    code, out = invoke("plan", "customer_profile", "product_events", *project, "--json")
    assert [(p["sync"], p["changes"]["to_send"]) for p in json.loads(out)] == [
        ("customer_profile", 0),
        ("product_events", 0),
    ]

    code, out = invoke("runs", *project, "--json")
    assert {r["sync"] for r in json.loads(out)} == {
        "billing",
        "companies",
        "customer_profile",
        "leads",
        "memberships",
        "product_events",
    }
    code, out = invoke("history", "--person", "user7@saasco.io", *project, "--json")
    calls = json.loads(out)
    seen = {(c["sync"], c["action"], c["outcome"], c["status"]) for c in calls}
    # the identify, and (through the identity graph, by the same person's email) the events
    # sent for user 7
    assert ("customer_profile", "identify", "delivered", 200) in seen
    assert ("product_events", "event", "delivered", 200) in seen
    assert {c["outcome"] for c in calls} == {"delivered"}
    # the email in another case is the same person
    code, out = invoke("history", "--person", "USER7@saasco.io", *project, "--json")
    assert {(c["sync"], c["action"]) for c in json.loads(out)} == {
        (sync, action) for sync, action, _, _ in seen
    }
    # an anonymous id of user 7's (the identify carries one as its `anonymous_id` attribute,
    # and their anonymous events were sent by `id`): the same person's calls
    for anonymous in ("anon_7_0", "anon_7_1"):
        code, out = invoke("history", "--person", anonymous, *project, "--json")
        assert {(c["sync"], c["action"]) for c in json.loads(out)} == {
            (sync, action) for sync, action, _, _ in seen
        }, anonymous
    # a device shared by twenty people (quarantined by the graph) names none of them
    code, out = invoke("history", "--person", "device-kiosk", *project, "--json")
    assert json.loads(out) == []
    # someone never sent to: said so, with how people are looked up
    code, out = invoke("history", "--person", "nobody@example.com", *project)
    assert code == 0 and "No call recorded for `nobody@example.com` in the last 90 days" in out
    # person `1`: their own calls only, not every object whose type id is "1" or whose key is 1
    code, out = invoke("history", "--person", "1", *project, "--json")
    calls = json.loads(out)
    assert ("customer_profile", "identify") in {(c["sync"], c["action"]) for c in calls}
    assert "companies" not in {c["sync"] for c in calls}
    for c in calls:
        who = json.loads(c["ident"])
        assert who.get("person", who).get("id") == "1", c
    # named by email, the same calls: the relationships and events carry only the `id`
    code, out = invoke("history", "--person", "User1@saasco.io", *project, "--json")
    by_email = {(c["sync"], c["action"], c["k"]) for c in json.loads(out)}
    assert by_email == {(c["sync"], c["action"], c["k"]) for c in calls}
    assert "memberships" in {sync for sync, _, _ in by_email}
    # more calls than `--limit`: the table says it shows the latest ones, and names each
    # call's record (which event of several)
    assert len(calls) > 2
    code, out = invoke("history", "--person", "User1@saasco.io", *project, "--limit", "2")
    said = " ".join(out.split())
    assert (
        code == 0 and "history of User1@saasco.io: the latest 2 calls (`--limit` for more)" in said
    )
    shown = [line.split("│")[5].strip() for line in out.splitlines() if "│ delivered" in line]
    assert len(shown) == 2 and set(shown) <= {c["k"] for c in calls}


def test_runs_are_listed_while_a_sync_holds_the_state(
    tmp_path: Path, customerio_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lockgate.state.store import StateStore, read_runs_log

    project = demo_project(tmp_path, customerio_emulator, monkeypatch, users=50)
    invoke("sync", "companies", *project, "--json")

    # a second sync is under way: it holds the state database
    with StateStore.open(tmp_path / ".lockgate") as store:
        store.start_run("20261123T000000-live", "leads", "people")
        code, out = invoke("runs", *project, "--json")
        listed = [(r["sync"], r["status"]) for r in json.loads(out)]
        assert code == 0 and listed == [("leads", "running"), ("companies", "success")]
        code, out = invoke("runs", *project)
        flat = " ".join(out.split())
        assert "in use by pid" in flat and "leads" in flat and "running" in flat
        assert "…" not in out  # an 80-column table folds values, never cuts them
        # one run whole, from the same log: the report, not the rows kept in the state
        code, out = invoke("runs", "show", "--sync", "companies", *project, "--json")
        shown = json.loads(out)
        assert code == 0 and shown["sync"] == "companies" and shown["status"] == "success"
        assert shown["counts"]["delivered"] > 0 and shown["rejected_recorded"] == 0
        code, out = invoke("runs", "show", "live", *project)
        assert "runs.json" in " ".join(out.split()) and "running" in out
        store.finish_run("20261123T000000-live", "success", {"delivered": 3})
        # the log the finish wrote says what the state says, times and counts alike
        assert read_runs_log(tmp_path / ".lockgate", limit=10) == store.runs(limit=10)
    code, out = invoke("runs", *project, "--json")
    assert [(r["sync"], r["status"]) for r in json.loads(out)][0] == ("leads", "success")


def test_sync_all_runs_the_other_syncs_when_one_fails(
    tmp_path: Path,
    customerio_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lockgate.cli import main

    project = demo_project(tmp_path, customerio_emulator, monkeypatch, users=50)
    model = tmp_path / "models" / "customer_profile.sql"
    model.write_text(model.read_text().replace("select", "selec", 1))  # one broken model
    with pytest.raises(SystemExit) as exited:
        main(["sync", "--all", *project, "--json"])
    assert exited.value.code == 1
    captured = capsys.readouterr()
    runs = {r["sync"]: r["status"] for r in json.loads(captured.out)}
    assert runs.pop("customer_profile") == "failed"
    assert set(runs.values()) == {"success"} and len(runs) == 5  # the other five ran
    assert "1 of 6 syncs failed: customer_profile" in captured.err
    assert len(customerio_emulator.people()) > 0


def _fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the CLI as the console script does; it must exit 1. What it said, on one line."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    assert exited.value.code == 1, out
    return " ".join((out.out + out.err).split())


def test_init_never_overwrites_a_file_of_the_folder_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a folder holding the team's own warehouse under the name the sample one takes, and a
    # sync and a model of the scaffold's names, but no lockgate.yml yet: `init --sample-data`
    # deleted the warehouse and replaced both files
    import duckdb

    root = tmp_path / "p"
    (root / "syncs").mkdir(parents=True)
    (root / "models").mkdir()
    con = duckdb.connect(str(root / "warehouse.duckdb"))
    con.execute("create table mine as select 42 as answer")
    con.close()
    (root / "syncs" / "customer_profile.yml").write_text("# ours\n")
    (root / "models" / "customer_profile.sql").write_text("select 1 -- ours\n")

    said = _fails(capsys, "init", str(root), "--sample-data")
    assert "`models/customer_profile.sql`, `syncs/customer_profile.yml`, `warehouse.duckdb`" in said
    assert "nothing was written" in said and "--force" in said
    assert (root / "syncs" / "customer_profile.yml").read_text() == "# ours\n"
    assert (root / "models" / "customer_profile.sql").read_text() == "select 1 -- ours\n"
    assert not (root / "lockgate.yml").exists() and not (root / ".lockgate-schema").exists()
    con = duckdb.connect(str(root / "warehouse.duckdb"))
    assert con.execute("select answer from mine").fetchall() == [(42,)]
    con.close()

    # without --sample-data the warehouse is not the scaffold's to write: only the two files
    code, out = invoke("init", str(root), "--force")
    assert code == 0 and "# ours" not in (root / "syncs" / "customer_profile.yml").read_text()
    con = duckdb.connect(str(root / "warehouse.duckdb"))
    assert con.execute("select answer from mine").fetchall() == [(42,)]
    con.close()


def test_demo_never_removes_a_folder_it_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `lockgate demo --dir .` (or a folder of one's own named demo/) was removed whole
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me\n")
    said = _fails(capsys, "demo", "--dir", str(root))
    assert "is not a folder `lockgate demo` made" in said
    assert (root / "notes.txt").read_text() == "keep me\n"
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


def test_demo_replaces_a_folder_an_earlier_demo_made_before_its_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a folder made before the demo left its mark file is known by its lockgate.yml, as that
    # version wrote it: changing the template's comment must not make those folders foreign
    import subprocess

    root = tmp_path / "demo"
    root.mkdir()
    older = subprocess.run(
        ["git", "show", "098266f:src/lockgate/demo/project/lockgate.yml"],
        capture_output=True,
        check=False,
        cwd=Path(__file__).parent,
    )
    if older.returncode != 0:
        pytest.skip("needs the git history (a clone, not an sdist)")
    (root / "lockgate.yml").write_bytes(older.stdout)
    (root / "stale.txt").write_text("an earlier demo's file\n")
    assert invoke("demo", "--dir", str(root))[0] == 0
    assert not (root / "stale.txt").exists() and (root / "warehouse.duckdb").is_file()


def test_validate_warns_of_a_customerio_region_that_is_no_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`CUSTOMERIO_REGION=europe` used to pass `validate` and `plan`, and stop every sync at its
    deliver step: `validate` now says so (a warning, as for a variable not set), in text and
    in `--json`; `region:` in lockgate.yml, which wins over the variable, silences it."""
    invoke("init", str(tmp_path / "p"))
    monkeypatch.setenv("CUSTOMERIO_REGION", "europe")
    code, out = invoke("validate", "--project", str(tmp_path / "p"))
    assert code == 0
    assert (
        "destination `customerio`: `CUSTOMERIO_REGION` is `europe`, which is not a Customer.io "
        "region; syncs through it will stop before sending"
    ) in " ".join(out.split())
    code, out = invoke("validate", "--project", str(tmp_path / "p"), "--json")
    report = json.loads(out)
    assert report["valid"] and len(report["bad_region"]) == 1
    yml = tmp_path / "p" / "lockgate.yml"
    text = yml.read_text()
    assert "    type: customerio\n" in text
    yml.write_text(text.replace("    type: customerio\n", "    type: customerio\n    region: eu\n"))
    code, out = invoke("validate", "--project", str(tmp_path / "p"), "--json")
    assert json.loads(out)["bad_region"] == []
