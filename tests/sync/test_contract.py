"""`lockgate validate` checks the data contract across syncs, before any run."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from tests.sync.helpers import read_only

from lockgate.cli import cli
from lockgate.console import NullConsole
from lockgate.errors import ContractError
from lockgate.sync.contract import event_name_key
from lockgate.sync.run import run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PEOPLE = """
name: {name}
source: warehouse
model: {{sql: "select 1 as user_id, 'pro' as plan, 'a@example.com' as email"}}
kind: people
primary_key: user_id
identify_by: {{id: user_id, email: email}}
attributes: [plan]
"""

EVENTS = """
name: {name}
source: warehouse
model: {{sql: "select 1 as user_id, 'o1' as order_id, 'Checkout Abandoned' as what"}}
kind: events
identify_by: {{id: user_id}}
event: {{name: {event}, id: order_id}}
backfill: {{older: send}}
"""


def validate(project: Any) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(
        cli, ["validate", "--project", str(project.root), "--json"], catch_exceptions=False
    )
    return result.exit_code, json.loads(result.output)


def test_event_names_are_compared_without_case_punctuation_or_word_order() -> None:
    keys = {
        event_name_key(n)
        for n in (
            "Checkout Abandoned",
            "abandoned_checkout",
            "checkoutAbandoned",
            "Abandoned-Checkout!",
        )
    }
    assert keys == {"abandoned checkout"}
    assert event_name_key("Checkout Started") != event_name_key("Checkout Abandoned")


def test_event_names_in_other_scripts_are_words_too() -> None:
    """Letters beyond a-z are letters: `注文完了` (order completed) and `会員登録` (signed up)
    are two events, not two spellings of one (every name without a Latin letter had the empty
    key, so a Japanese team's second event name stopped the run as drift)."""
    assert event_name_key("注文完了") != event_name_key("会員登録")
    assert event_name_key("Ödeme Yapıldı") != event_name_key("Ädeme Yapıldı")
    assert event_name_key("🎉") != event_name_key("🚀")  # no word at all: the name itself
    # spellings of one name still meet, whatever the script
    assert event_name_key("Заказ оформлен") == event_name_key("заказ_оформлен")
    assert event_name_key("Ödeme Yapıldı") == event_name_key("ödeme-yapıldı")
    assert event_name_key("\u00d6deme") == event_name_key("O\u0308deme")  # composed or not


def test_two_syncs_writing_one_attribute_is_an_error_naming_both(
    project_factory: ProjectFactory,
) -> None:
    project = project_factory.write(
        {"crm": PEOPLE.format(name="crm"), "billing": PEOPLE.format(name="billing")}
    )
    code, report = validate(project)
    assert code == 1 and not report["valid"]
    (finding,) = report["contract"]
    assert finding["check"] == "ownership" and finding["level"] == "error"
    assert "attribute `plan`" in finding["message"]
    assert "sync `billing` (syncs/billing.yml) and sync `crm` (syncs/crm.yml)" in finding["message"]
    assert "email" not in finding["message"]  # the implicit email attribute is not counted

    shared = "guardrails: {shared_attributes: [plan]}\n"
    project = project_factory.write(
        {"crm": PEOPLE.format(name="crm") + shared, "billing": PEOPLE.format(name="billing")}
    )
    assert validate(project)[0] == 1  # one side acknowledging is not enough
    project = project_factory.write(
        {
            "crm": PEOPLE.format(name="crm") + shared,
            "billing": PEOPLE.format(name="billing") + shared,
        }
    )
    code, report = validate(project)
    assert code == 0 and report["valid"]
    assert [f["level"] for f in report["contract"]] == ["warning"]


def test_people_syncs_setting_over_300_attributes_together_are_a_warning(
    project_factory: ProjectFactory,
) -> None:
    """Each identify holds at most 300 attributes (an error when the file loads); syncs that
    together set more than Customer.io keeps per person get a warning naming them."""

    def wide(name: str, columns: range) -> str:
        select = ", ".join(f"{i} as a{i}" for i in columns)
        listed = ", ".join(f"a{i}" for i in columns)
        return (
            PEOPLE.format(name=name)
            .replace("'a@example.com' as email", f"'a@example.com' as email, {select}")
            .replace("attributes: [plan]", f"attributes: [{listed}]")
        )

    # 150 + 149 attributes and the email: 300, at the limit
    project = project_factory.write(
        {"crm": wide("crm", range(150)), "app": wide("app", range(150, 299))}
    )
    code, report = validate(project)
    assert code == 0 and report["valid"] and report["contract"] == []

    project = project_factory.write(
        {"crm": wide("crm", range(150)), "app": wide("app", range(150, 320))}
    )
    code, report = validate(project)
    assert code == 0 and report["valid"]
    (budget,) = report["contract"]
    assert budget["check"] == "attribute budget" and budget["level"] == "warning"
    assert "the people syncs `app`, `crm`" in budget["message"]
    assert "321 distinct attributes" in budget["message"]
    assert budget["files"] == ["syncs/app.yml", "syncs/crm.yml"]


def wide_sync(name: str, columns: range, *, kind: str = "people") -> str:
    """A sync of one row writing the attributes `a<i>` for each i of ``columns``."""
    select = ", ".join(f"{i} as a{i}" for i in columns)
    listed = ", ".join(f"a{i}" for i in columns)
    if kind == "objects":
        return f"""
name: {name}
source: warehouse
model: {{sql: "select 'c1' as company_id, {select}"}}
kind: objects
object_type_id: "1"
primary_key: company_id
attributes: [{listed}]
"""
    return f"""
name: {name}
source: warehouse
model: {{sql: "select 1 as user_id, {select}"}}
kind: people
primary_key: user_id
identify_by: {{id: user_id}}
attributes: [{listed}]
"""


def test_objects_syncs_of_one_type_setting_over_300_attributes_together_are_a_warning(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io keeps 300 attributes on an object too; objects syncs of one object type
    were not counted together."""
    project = project_factory.write(
        {
            "crm": wide_sync("crm", range(200), kind="objects"),
            # no attribute written by both: that is an ownership error, not this warning
            "app": wide_sync("app", range(200, 350), kind="objects"),
        }
    )
    code, report = validate(project)
    assert code == 0 and report["valid"]
    (budget,) = report["contract"]
    assert budget["check"] == "attribute budget" and budget["level"] == "warning"
    assert "the objects syncs `app`, `crm` (objects of type `1`)" in budget["message"]
    assert "write 350 distinct attributes together" in budget["message"]
    assert "Customer.io keeps at most 300 on an object" in budget["message"]


def test_the_identity_graphs_attributes_count_toward_the_people_budget(
    project_factory: ProjectFactory,
) -> None:
    """An identity graph adds its `attribute:` identifiers (and `contested_email`) to every
    person a people sync keyed through it writes: 299 of the sync's own and those are over 300."""
    project = project_factory.write({"crm": wide_sync("crm", range(299))})
    yml = project.root / "lockgate.yml"
    yml.write_text(
        yml.read_text()
        + "identity:\n  identifier_types:\n"
        + "    user_id: {priority: 1, limit: 1, customerio: id}\n"
        + "    email: {priority: 2, limit: 5, customerio: email}\n"
        + '    stripe_id: {priority: 3, limit: 2, customerio: "attribute:stripe_id"}\n'
        + "  sources: [{name: users, table: users}]\n"
    )
    code, report = validate(project)
    assert code == 0 and report["valid"], report
    (budget,) = report["contract"]
    assert (
        "the people sync `crm` of destination `customerio` writes 302 distinct"
        in (budget["message"])
    )
    graph = "`contested_email`, `contested_id`, `stripe_id`"
    assert f"(with the 3 the identity graph adds: {graph})" in budget["message"]


def test_sync_warns_once_of_people_syncs_over_300_attributes_together(
    project_factory: ProjectFactory,
) -> None:
    """`validate` warned, `sync` said nothing: the person got 300 attributes, and Customer.io
    logged the rest as attribute update failures no run report shows. `sync` (and `plan`)
    now say it once per command, naming the syncs, the count and the fix."""
    project_factory.sql("create table if not exists unused as select 1 as x")
    project = project_factory.write(
        {"crm": wide_sync("crm", range(200)), "app": wide_sync("app", range(200, 310))}
    )
    args = ["--all", "--project", str(project.root)]
    for command in ("plan", "sync"):
        result = CliRunner().invoke(cli, [command, *args])
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())
        warning = (
            "the people syncs `app`, `crm` of destination `customerio` write 310 distinct "
            "attributes together; Customer.io keeps at most 300 on a person"
        )
        assert said.count(warning) == 1, said
        assert "Drop attributes no campaign or segment reads" in said
    person = project_factory.emulator.person(id="1")
    assert person is not None and len(person.attributes) == 300  # what the warning foretold


def test_sync_and_plan_warn_once_of_two_syncs_writing_one_attribute(
    project_factory: ProjectFactory,
) -> None:
    """`validate` called it an error, but `sync --all` ran both syncs without a word and the
    later one overwrote the earlier one's `plan` on every person. `plan` and `sync` now say
    it once per command, naming the attribute, both syncs and the fix; acknowledged in
    `shared_attributes`, nothing is said."""
    project_factory.sql("create table if not exists unused as select 1 as x")
    syncs = {"crm": PEOPLE.format(name="crm"), "billing": PEOPLE.format(name="billing")}
    project = project_factory.write(syncs)
    args = ["--all", "--project", str(project.root)]
    warning = (
        "attribute `plan` of destination `customerio` is written by sync `billing` "
        "(syncs/billing.yml) and sync `crm` (syncs/crm.yml): each run overwrites the other's "
        "value"
    )
    for command in ("plan", "sync"):
        result = CliRunner().invoke(cli, [command, *args])
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())
        assert said.count(warning) == 1, said
        assert "`guardrails: {shared_attributes: [plan]}`" in said  # the fix, `[plan]` kept
    # one sync of the two, run alone, is warned too
    result = CliRunner().invoke(cli, ["plan", "crm", "--project", str(project.root)])
    assert " ".join(result.output.split()).count(warning) == 1

    shared = "guardrails: {shared_attributes: [plan]}\n"
    project = project_factory.write({n: body + shared for n, body in syncs.items()})
    result = CliRunner().invoke(cli, ["sync", *args])
    assert result.exit_code == 0 and "overwrites" not in result.output, result.output


OBJECTS = """
name: {name}
source: warehouse
model: {{sql: "select 'acme' as company_id, '{value}' as tier"}}
kind: objects
object_type_id: "{type}"
primary_key: company_id
attributes: [tier]
"""


def test_two_objects_syncs_writing_one_attribute_of_a_type_is_an_error_and_a_run_warning(
    project_factory: ProjectFactory,
) -> None:
    """Two objects syncs of one object type writing `tier` overwrite each other on every
    object both reach, as two people syncs do, but only people syncs were checked: `validate`
    passed and the runs said nothing. Now it is the same ownership error (a warning when every
    sync acknowledges it), and `sync` warns and sends, as for people (docs/guardrails.md).
    Syncs of two object types do not share an attribute."""
    syncs = {
        "crm": OBJECTS.format(name="crm", value="gold", type="1"),
        "billing": OBJECTS.format(name="billing", value="silver", type="1"),
    }
    project_factory.sql("create table if not exists unused as select 1 as x")
    project = project_factory.write(syncs)
    code, report = validate(project)
    assert code == 1 and not report["valid"]
    (finding,) = report["contract"]
    assert (finding["check"], finding["level"]) == ("ownership", "error")
    assert finding["message"].startswith(
        "attribute `tier` of objects of type `1` of destination `customerio` is written by "
        "sync `billing` (syncs/billing.yml) and sync `crm` (syncs/crm.yml)"
    )
    result = CliRunner().invoke(cli, ["sync", "--all", "--project", str(project.root)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert said.count("attribute `tier` of objects of type `1`") == 1, said
    assert "every object both reach holds whichever ran last" in said
    (acme,) = project_factory.emulator.objects()
    assert acme.attributes["tier"] in ("gold", "silver")  # the one that ran last

    shared = "guardrails: {shared_attributes: [tier]}\n"
    project = project_factory.write({n: body + shared for n, body in syncs.items()})
    code, report = validate(project)
    assert code == 0 and [f["level"] for f in report["contract"]] == ["warning"]
    other_type = {**syncs, "billing": syncs["billing"].replace('"1"', '"2"')}
    project = project_factory.write(other_type)
    code, report = validate(project)
    assert code == 0 and report["contract"] == []


def test_event_name_drift_in_configs_and_in_names_already_sent(
    project_factory: ProjectFactory,
) -> None:
    project = project_factory.write(
        {
            "a": EVENTS.format(name="a", event="{value: Checkout Abandoned}"),
            "b": EVENTS.format(name="b", event="{value: abandoned_checkout}"),
        }
    )
    code, report = validate(project)
    assert code == 1
    (finding,) = report["contract"]
    assert finding["check"] == "event-name drift"
    assert (
        "`Checkout Abandoned` (syncs/a.yml) vs `abandoned_checkout` (syncs/b.yml)"
        in (finding["message"])
    )

    # a name column: the names the sync has sent are checked against the configs
    project = project_factory.write(
        {
            "a": EVENTS.format(name="a", event="what"),
            "b": EVENTS.format(name="b", event="{value: abandoned checkout}"),
        }
    )
    assert validate(project)[0] == 0  # nothing sent yet
    project_factory.sql("create table if not exists t as select 1 as x")  # the warehouse file
    # the run that would first send the name stops (docs/guardrails.md); forced, it is sent
    with pytest.raises(ContractError, match="event-name drift: `Checkout Abandoned` vs `abandon"):
        run_sync(project, "a", console=NullConsole())
    assert run_sync(project, "a", console=NullConsole(), force=True).delivered == 1
    code, report = validate(project)
    assert code == 1
    assert "`Checkout Abandoned` (sent by sync `a`)" in report["contract"][0]["message"]

    acknowledged = "guardrails: {distinct_event_names: [abandoned checkout]}\n"
    project = project_factory.write(
        {
            "a": EVENTS.format(name="a", event="what"),
            "b": EVENTS.format(name="b", event="{value: abandoned checkout}") + acknowledged,
        }
    )
    code, report = validate(project)
    assert code == 0 and report["contract"][0]["level"] == "warning"


def test_an_identifier_changed_since_the_last_run(project_factory: ProjectFactory) -> None:
    project_factory.sql("create table if not exists t as select 1 as x")  # the warehouse file
    project = project_factory.write({"crm": PEOPLE.format(name="crm")})
    run_sync(project, "crm", console=NullConsole())
    assert validate(project) == (
        0,
        {"valid": True, "syncs": ["crm"], "missing_env": [], "bad_region": [], "contract": []},
    )
    changed = PEOPLE.format(name="crm").replace("{id: user_id, email: email}", "{email: email}")
    project = project_factory.write({"crm": changed})
    code, report = validate(project)
    assert code == 1
    (finding,) = report["contract"]
    assert finding["check"] == "identifier changed"
    assert (
        'sync `crm` (syncs/crm.yml): `identify_by` was {"id":"user_id","email":"email"}, '
        'now {"email":"email"}' in finding["message"]
    )


def test_validate_reads_a_read_only_state_and_one_other_readers_hold(
    project_factory: ProjectFactory,
) -> None:
    """The contract checks that read the state open it to read only: a state on a read-only
    mount (a backup, a CI copy) or one a `lockgate runs` is reading is checked all the same."""
    from lockgate.state.store import StateStore

    project_factory.sql("create table if not exists t as select 1 as x")  # the warehouse file
    project = project_factory.write(
        {"crm": PEOPLE.format(name="crm"), "a": EVENTS.format(name="a", event="what")}
    )
    state = project.root / ".lockgate"
    # a state written before any run committed (a plan): no contract recorded in it yet
    assert CliRunner().invoke(cli, ["plan", "crm", "--project", str(project.root)]).exit_code == 0
    assert (state / "state.duckdb").exists()
    with read_only(state):
        assert validate(project) == (
            0,
            {
                "valid": True,
                "syncs": ["a", "crm"],
                "missing_env": [],
                "bad_region": [],
                "contract": [],
            },
        )

    for name in ("crm", "a"):
        assert run_sync(project, name, console=NullConsole()).status == "success"
    changed = PEOPLE.format(name="crm").replace("{id: user_id, email: email}", "{email: email}")
    project = project_factory.write(
        {
            "crm": changed,
            "a": EVENTS.format(name="a", event="what"),
            "b": EVENTS.format(name="b", event="{value: abandoned checkout}"),
        }
    )

    def found(report: dict[str, Any]) -> dict[str, str]:
        return {f["check"]: f["message"] for f in report["contract"] if f["level"] == "error"}

    with read_only(state):
        code, report = validate(project)
        assert code == 1
        errors = found(report)
        assert sorted(errors) == ["event-name drift", "identifier changed"], report["contract"]
        assert "`Checkout Abandoned` (sent by sync `a`)" in errors["event-name drift"]
        assert "sync `crm` (syncs/crm.yml): `identify_by` was" in errors["identifier changed"]
        assert not [f for f in report["contract"] if f["check"] == "state"]
    with StateStore.open_read_only(state):  # another reader
        code, report = validate(project)
        assert (code, sorted(found(report))) == (1, ["event-name drift", "identifier changed"])


def test_validate_creates_nothing_in_a_project_never_synced(
    project_factory: ProjectFactory,
) -> None:
    project = project_factory.write({"crm": PEOPLE.format(name="crm")})
    assert validate(project)[0] == 0
    assert not (project.root / ".lockgate").exists()
