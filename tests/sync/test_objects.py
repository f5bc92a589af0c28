"""Objects and relationships: companies as Customer.io objects, memberships as relationships."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from tests.sync.helpers import UNMARK_TABLES, sent_ops

from lockgate.cli import cli
from lockgate.cli.sync import change_rows
from lockgate.console import NullConsole
from lockgate.emulator import FaultConfig
from lockgate.errors import ConfigError
from lockgate.state.store import StateStore
from lockgate.sync.run import plan_sync, run_sync

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

COMPANIES = """
name: companies
source: warehouse
model: {table: companies}
kind: objects
object_type_id: "1"
primary_key: company_id
attributes: {name: name, plan: plan, seats: {column: seats, type: integer}}
"""

PEOPLE = """
name: people
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {id: user_id}
attributes: [first_name]
"""

MEMBERSHIPS = """
name: memberships
source: warehouse
model: {table: members}
kind: relationships
object_type_id: "1"
object_id: company_id
identify_by: {id: user_id}
relationship_attributes: {role: role}
"""


def seed(factory: ProjectFactory) -> None:
    factory.sql(
        """
        create or replace table companies as select * from (values
          ('acme', 'Acme', 'pro', 25), ('globex', 'Globex', 'free', 3)
        ) t(company_id, name, plan, seats);
        create or replace table users as select * from (values
          (1, 'Ada'), (2, 'Grace'), (3, 'Linus')
        ) t(user_id, first_name);
        create or replace table members as select * from (values
          (1, 'acme', 'admin'), (2, 'acme', 'member'), (3, 'globex', 'owner')
        ) t(user_id, company_id, role);
        """
    )


def rels(emu: Any) -> set[tuple[str | None, str, str, Any]]:
    by_cio = {p.cio_id: p.id for p in emu.people()}
    return {
        (by_cio.get(r.person), r.object_type_id, r.object_id, r.attributes.get("role"))
        for r in emu.relationships()
    }


def run_all(project: Any) -> dict[str, Any]:
    from lockgate.sync.run import KIND_ORDER

    names = sorted(project.syncs, key=lambda n: KIND_ORDER[project.syncs[n].kind])
    return {n: run_sync(project, n, console=NullConsole()) for n in names}


def with_attributes(factory: ProjectFactory, objects: str, relationships: str) -> Any:
    """The three syncs, with the companies' `attributes` and the memberships'
    `relationship_attributes` replaced (YAML flow mappings)."""
    companies = COMPANIES.replace(
        "attributes: {name: name, plan: plan, seats: {column: seats, type: integer}}",
        f"attributes: {objects}",
    )
    memberships = MEMBERSHIPS.replace(
        "relationship_attributes: {role: role}", f"relationship_attributes: {relationships}"
    )
    return factory.write({"companies": companies, "people": PEOPLE, "memberships": memberships})


def test_objects_and_relationships_land_in_customerio(project_factory: ProjectFactory) -> None:
    seed(project_factory)
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    reports = run_all(project)
    assert all(r.status == "success" for r in reports.values())
    emu = project_factory.emulator
    objects = {(o.object_type_id, o.object_id): o.attributes for o in emu.objects()}
    assert objects[("1", "acme")] == {"name": "Acme", "plan": "pro", "seats": 25}
    assert rels(emu) == {
        ("1", "1", "acme", "admin"),
        ("2", "1", "acme", "member"),
        ("3", "1", "globex", "owner"),
    }


def test_changed_attributes_and_removed_relationships(project_factory: ProjectFactory) -> None:
    seed(project_factory)
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    project_factory.sql(
        "update members set role = 'owner' where user_id = 2; delete from members where user_id = 3"
    )
    plan = plan_sync(project, "memberships", console=NullConsole())
    assert plan.mode == "mirror"  # relationships mirror by default, and plan says so
    assert (plan.changes.changed, plan.changes.removed, plan.changes.removed_sent) == (1, 1, 1)
    report = run_sync(project, "memberships", console=NullConsole())
    assert report.delivered == 2
    assert rels(project_factory.emulator) == {
        ("1", "1", "acme", "admin"),
        ("2", "1", "acme", "owner"),
    }


CRM_CONTACTS = """
name: crm_contacts
source: warehouse
model: {table: contacts}
kind: relationships
object_type_id: "1"
object_id: company_id
identify_by: {email: email}
relationship_attributes: {crm_role: crm_role}
"""


def test_a_relationship_another_sync_still_holds_is_not_deleted(
    project_factory: ProjectFactory,
) -> None:
    """Memberships from the app (by `id`) and contacts from the CRM (by email, the people
    sync delivering both) relate Ada to Acme. Her membership leaving the app's model must not
    delete the relationship the CRM still holds; once it leaves the CRM too, it goes."""
    seed(project_factory)
    project_factory.sql(
        """
        create or replace table users as select *, lower(first_name) || '@x.io' as email
        from users;
        create or replace table contacts as select * from (values
          ('ada@x.io', 'acme', 'billing')) t(email, company_id, crm_role);
        """
    )
    project = project_factory.write(
        {
            "companies": COMPANIES,
            "people": PEOPLE.replace("{id: user_id}", "{id: user_id, email: email}"),
            "memberships": MEMBERSHIPS,
            "crm_contacts": CRM_CONTACTS,
        }
    )
    run_all(project)
    emu = project_factory.emulator
    assert ("1", "1", "acme", "admin") in rels(emu)

    project_factory.sql("delete from members where user_id = 1")
    app = run_sync(project, "memberships", console=NullConsole())
    assert (app.changes.removed, app.changes.removed_sent) == (1, 0)
    assert ("1", "acme") in {(who, obj) for who, _, obj, _ in rels(emu)}
    crm = run_sync(project, "crm_contacts", console=NullConsole())
    assert crm.changes.to_send == 0

    project_factory.sql("delete from contacts")  # the last: the empty-model check is accepted
    gone = run_sync(project, "crm_contacts", console=NullConsole(), force=True)
    assert (gone.changes.removed_sent, gone.delivered) == (1, 1)
    assert ("1", "acme") not in {(who, obj) for who, _, obj, _ in rels(emu)}
    assert {(who, obj) for who, _, obj, _ in rels(emu)} == {("2", "acme"), ("3", "globex")}


def test_an_object_attribute_taken_out_of_the_mapping_is_cleared_when_asked(
    project_factory: ProjectFactory,
) -> None:
    seed(project_factory)
    run_sync(project_factory.write({"companies": COMPANIES}), "companies", console=NullConsole())
    fewer = COMPANIES.replace(", seats: {column: seats, type: integer}", "")
    project = project_factory.write({"companies": fewer + "clear_removed_attributes: true\n"})
    report = run_sync(project, "companies", console=NullConsole())
    assert report.delivered == 2 and report.changes.attributes_cleared == 2
    objects = {o.object_id: o.attributes for o in project_factory.emulator.objects()}
    assert objects["acme"] == {"name": "Acme", "plan": "pro"}  # `seats` cleared
    assert run_sync(project, "companies", console=NullConsole()).changes.to_send == 0


def test_relationship_waits_for_its_object_and_person(project_factory: ProjectFactory) -> None:
    seed(project_factory)
    project_factory.sql("insert into members values (1, 'initech', 'admin'), (9, 'acme', 'guest')")
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    reports = run_all(project)
    memberships = reports["memberships"]
    assert memberships.changes.held == 2
    held = dict(memberships.changes.held_samples)
    assert held['{"id":"1"} initech'] == (
        "object `initech` is not among the objects sent (not synced yet, or it left the "
        "objects sync's model)"
    )
    assert held['{"id":"9"} acme'] == (
        'person {"id":"9"} is not among the people sent (not synced yet, or they left the '
        "people sync's model)"
    )
    emu = project_factory.emulator
    assert ("1", "1", "initech", "admin") not in rels(emu)

    # the object arrives later: the held relationship goes out on the next run, once
    project_factory.sql("insert into companies values ('initech', 'Initech', 'pro', 9)")
    again = run_all(project)
    assert again["memberships"].delivered == 1 and again["memberships"].changes.held == 1
    assert ("1", "1", "initech", "admin") in rels(emu)
    assert run_sync(project, "memberships", console=NullConsole()).changes.to_send == 0


def test_syncs_named_in_any_order_run_objects_then_people_then_relationships(
    project_factory: ProjectFactory,
) -> None:
    """`lockgate sync memberships people companies` runs the companies and the people before
    the memberships, as `--all` does: every membership lands on the first run instead of
    being held for objects and people the same command was about to send."""
    seed(project_factory)
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    plans = invoke(project, "plan", "memberships", "people", "companies")
    assert [p["sync"] for p in plans] == ["companies", "people", "memberships"]
    runs = invoke(project, "sync", "memberships", "people", "companies")
    assert [r["sync"] for r in runs] == ["companies", "people", "memberships"]
    memberships = runs[2]
    assert (memberships["changes"]["held"], memberships["delivered"]) == (0, 3)
    assert rels(project_factory.emulator) == {
        ("1", "1", "acme", "admin"),
        ("2", "1", "acme", "member"),
        ("3", "1", "globex", "owner"),
    }


def invoke(project: Any, *args: str) -> Any:
    """`lockgate ARGS --project ... --json`, its JSON output."""
    result = CliRunner().invoke(cli, [*args, "--project", str(project.root), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_objects_mirror_delete(project_factory: ProjectFactory) -> None:
    seed(project_factory)
    mirror = COMPANIES + "mode: mirror\ndelete_removed: true\n"
    project = project_factory.write({"companies": mirror})
    run_sync(project, "companies", console=NullConsole())
    project_factory.sql("delete from companies where company_id = 'globex'")
    run_sync(project, "companies", console=NullConsole())
    assert {o.object_id for o in project_factory.emulator.objects()} == {"acme"}


def delete_object_by_hand(emu: Any, object_id: str) -> None:
    """Delete company ``object_id`` in Customer.io, as someone in its UI (or another tool)."""
    with emu.client(auth=emu.track_auth) as client:
        body = {
            "type": "object",
            "action": "delete",
            "identifiers": {"object_type_id": "1", "object_id": object_id},
        }
        client.post("/api/v2/entity", json=body).raise_for_status()


def test_a_mirror_clear_does_not_bring_back_an_object_deleted_by_hand(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """globex is deleted in Customer.io by hand (user 3's membership with it), then leaves
    the model of a `mirror` sync. Its clear, an object `identify` by type and id, would
    create it again, empty (objects have no `_update`): with an App API key the run looks
    the leaving objects up first, does not clear globex and forgets it; acme, still there
    when it leaves, is cleared by its `cio_object_id` (update-only) and stays, empty. Back
    in the model, globex is sent as new, and the membership Customer.io deleted with it is
    sent again."""
    emu = project_factory.emulator
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emu.config.app_api_key)
    seed(project_factory)
    project_factory.sql("insert into companies values ('initech', 'Initech', 'pro', 9)")
    project = project_factory.write(
        {"companies": COMPANIES + "mode: mirror\n", "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    delete_object_by_hand(emu, "globex")
    assert ("3", "1", "globex", "owner") not in rels(emu)
    project_factory.sql("delete from companies where company_id <> 'initech'")

    report = run_all(project)["companies"]
    initech = {"name": "Initech", "plan": "pro", "seats": 9}
    held = {o.object_id: o.attributes for o in emu.objects()}
    assert held == {"acme": {}, "initech": initech}
    assert (report.status, report.object_check) == ("success", "")
    changes = report.changes
    assert (changes.removed, changes.removed_sent, changes.removed_gone) == (2, 1, 1)
    assert (report.delivered, changes.attributes_cleared) == (1, 3)
    cleared = [op for op in sent_ops(emu, 0) if op.get("identifiers", {}).get("cio_object_id")]
    acme = next(o for o in emu.objects() if o.object_id == "acme")
    assert [op["identifiers"] for op in cleared] == [{"cio_object_id": acme.cio_object_id}]
    # forgotten: nothing left to clear; back in the model, globex is sent as new, then the
    # membership Customer.io deleted with it
    assert plan_sync(project, "companies", console=NullConsole()).changes.to_send == 0
    project_factory.sql("insert into companies values ('globex', 'Globex', 'free', 3)")
    back = run_all(project)
    assert (back["companies"].changes.new, back["companies"].delivered) == (1, 1)
    held = {o.object_id: o.attributes for o in emu.objects()}
    globex = {"name": "Globex", "plan": "free", "seats": 3}
    assert held == {"acme": {}, "globex": globex, "initech": initech}
    assert ("3", "1", "globex", "owner") in rels(emu)


def test_an_app_api_that_refuses_the_key_leaves_the_clears_to_the_next_run(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The App API refuses the key, so the run cannot tell whether globex, leaving a
    `mirror` model, is still in Customer.io (it was deleted there by hand): it clears
    nothing, rather than create globex again, and says why; with the right key the next run
    finds globex gone and forgets it."""
    emu = project_factory.emulator
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", "not-the-key")
    seed(project_factory)
    project = project_factory.write({"companies": COMPANIES + "mode: mirror\n"})
    run_sync(project, "companies", console=NullConsole())
    delete_object_by_hand(emu, "globex")
    project_factory.sql("delete from companies where company_id = 'globex'")

    refused = run_sync(project, "companies", console=NullConsole())
    assert {o.object_id for o in emu.objects()} == {"acme"}
    assert (refused.status, refused.delivered, refused.changes.removed_sent) == ("success", 0, 0)
    assert refused.object_check.startswith(
        "1 object that left the model was not cleared: the App API could not be read to check "
        "that Customer.io still holds it (Customer.io refused the App API key (HTTP 401)"
    )
    assert refused.object_check.endswith("the next run tries again")

    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emu.config.app_api_key)
    again = run_sync(project, "companies", console=NullConsole())
    assert (again.changes.removed_gone, again.delivered, again.object_check) == (1, 0, "")
    assert {o.object_id for o in emu.objects()} == {"acme"}
    assert plan_sync(project, "companies", console=NullConsole()).changes.to_send == 0


def test_without_an_app_api_key_a_mirror_clear_says_what_it_risks(
    project_factory: ProjectFactory,
) -> None:
    """With no App API key to look objects up, a `mirror` clear goes by type and id, as
    before: the report says that an object deleted in Customer.io since comes back, empty,
    and how to have them looked up."""
    seed(project_factory)
    project = project_factory.write({"companies": COMPANIES + "mode: mirror\n"})
    run_sync(project, "companies", console=NullConsole())
    project_factory.sql("delete from companies where company_id = 'globex'")
    result = CliRunner().invoke(cli, ["sync", "companies", "--project", str(project.root)])
    assert result.exit_code == 0, result.output
    assert (
        "companies: 1 object that left the model was cleared without checking that "
        "Customer.io still holds it: an object deleted there since is created again, empty, "
        "by its clear; set `CUSTOMERIO_APP_API_KEY` (an App API key) to look them up first "
        "(docs/sync.md, Objects and relationships)"
    ) in " ".join(result.output.split())
    held = {o.object_id: o.attributes for o in project_factory.emulator.objects()}
    assert held == {"acme": {"name": "Acme", "plan": "pro", "seats": 25}, "globex": {}}


def test_an_object_repeated_in_a_full_resync_is_still_cleared_when_it_leaves(
    project_factory: ProjectFactory,
) -> None:
    """globex's id appears twice while `--full-resync` runs (both rows rejected, the object
    not sent): the resync still knows it delivered globex, so once globex leaves the model
    `mirror` clears it in Customer.io, not leaves it with every attribute."""
    seed(project_factory)
    project = project_factory.write({"companies": COMPANIES + "mode: mirror\n"})
    run_sync(project, "companies", console=NullConsole())
    project_factory.sql("insert into companies values ('globex', 'Globex', 'pro', 4)")
    resync = run_sync(project, "companies", console=NullConsole(), full_resync=True)
    assert (resync.changes.rejected, resync.delivered) == (2, 1)
    project_factory.sql("delete from companies where company_id = 'globex'")
    assert run_sync(project, "companies", console=NullConsole()).changes.removed_sent == 1
    held = {o.object_id: o.attributes for o in project_factory.emulator.objects()}
    assert held == {"acme": {"name": "Acme", "plan": "pro", "seats": 25}, "globex": {}}


def test_an_objects_sync_in_update_mode_is_refused_as_it_would_create_objects(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io has no update-only identify for an object named by type and id (`_update`
    is a person attribute): `mode: update` on an objects sync created every company, the
    opposite of what it promises, so the file is refused and nothing is sent."""
    seed(project_factory)
    with pytest.raises(ConfigError) as refused:
        project_factory.write({"companies": COMPANIES + "mode: update\n"})
    said = " ".join(str(refused.value).split())
    assert "syncs/companies.yml:9" in said
    assert "an `objects` sync is `upsert` or `mirror`" in said


def test_anonymous_visitors_are_related_with_the_object_side_shape(
    project_factory: ProjectFactory,
) -> None:
    seed(project_factory)
    project_factory.sql(
        """
        create or replace table visits as select * from (values
          (1, null, 'acme', 'viewer'), (null, 'anon-7', 'acme', 'visitor')
        ) t(user_id, anonymous_id, company_id, role);
        """
    )
    visits = (
        MEMBERSHIPS.replace("name: memberships", "name: visits")
        .replace("{table: members}", "{table: visits}")
        .replace(
            "identify_by: {id: user_id}", "identify_by: {id: user_id, anonymous_id: anonymous_id}"
        )
    )
    project = project_factory.write({"companies": COMPANIES, "people": PEOPLE, "visits": visits})
    reports = run_all(project)
    assert reports["visits"].delivered == 2 and reports["visits"].changes.held == 0
    emu = project_factory.emulator
    assert ("1", "1", "acme", "viewer") in rels(emu)
    sent = [
        op
        for r in emu.request_log()
        if r.path == "/api/v2/batch"
        for op in r.body["batch"]
        if op.get("action") == "identify_anonymous"
    ]
    assert sent and sent[0]["cio_relationships"][0]["identifiers"] == {"anonymous_id": "anon-7"}
    # when the visitor identifies, Customer.io carries the relationship over
    import httpx

    site, key = emu.track_auth
    httpx.put(
        f"{emu.base_url}/api/v1/customers/9", json={"anonymous_id": "anon-7"}, auth=(site, key)
    ).raise_for_status()
    assert ("9", "1", "acme", "visitor") in rels(emu)


def test_relationships_come_back_with_a_deleted_object(project_factory: ProjectFactory) -> None:
    """An object deleted by a mirror sync takes its relationships with it in Customer.io;
    when it comes back, so do they (they are not left recorded as delivered)."""
    seed(project_factory)
    companies = COMPANIES + "mode: mirror\ndelete_removed: true\n"
    project = project_factory.write(
        {"companies": companies, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    emu = project_factory.emulator
    project_factory.sql(
        "create table globex as select * from companies where company_id = 'globex'"
    )
    project_factory.sql("delete from companies where company_id = 'globex'")
    gone = run_all(project)
    assert ("3", "1", "globex", "owner") not in rels(emu)
    # while the object is gone, its relationship waits for it instead of counting as sent
    assert gone["memberships"].changes.held == 1
    project_factory.sql("insert into companies select * from globex")
    back = run_all(project)
    assert back["memberships"].delivered == 1
    assert ("3", "1", "globex", "owner") in rels(emu)
    assert run_sync(project, "memberships", console=NullConsole()).changes.to_send == 0


def test_an_object_deleted_by_hand_whose_row_a_full_resync_rejects_is_not_made_empty(
    project_factory: ProjectFactory,
) -> None:
    """Company globex is deleted in Customer.io by hand (its relationships with it) while its
    row has a bad `seats`. `sync --all --full-resync` sends everything else again, but not
    globex, whose row it rejects: user 3's membership of globex must wait for it, as an
    `add_relationships` creates the object it names, empty. Once the row is fixed (back to
    what was delivered before) the next run sends globex with its attributes, then the
    membership."""
    seed(project_factory)
    project_factory.sql(
        "create or replace table companies as "
        "select company_id, name, plan, seats::varchar as seats from companies"
    )
    companies = COMPANIES + "mode: mirror\ndelete_removed: true\n"
    project = project_factory.write(
        {"companies": companies, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    emu = project_factory.emulator
    project_factory.sql("update companies set seats = 'x' where company_id = 'globex'")
    with emu.client(auth=emu.track_auth) as client:
        body = {
            "type": "object",
            "action": "delete",
            "identifiers": {"object_type_id": "1", "object_id": "globex"},
        }
        client.post("/api/v2/entity", json=body).raise_for_status()

    plans = invoke(project, "plan", "--all", "--full-resync")
    runs = invoke(project, "sync", "--all", "--full-resync")
    objects = {o.object_id: o.attributes for o in emu.objects()}
    assert objects == {"acme": {"name": "Acme", "plan": "pro", "seats": 25}}
    assert ("3", "1", "globex", "owner") not in rels(emu)
    assert [r["changes"]["rejected"] for r in runs] == [1, 0, 0]
    assert [r["changes"]["held"] for r in runs] == [0, 0, 1]
    for plan, run in zip(plans, runs, strict=True):
        assert plan["changes"]["held"] == run["changes"]["held"], plan["sync"]
        assert plan["changes"]["to_send"] == run["changes"]["to_send"], plan["sync"]
    assert [p["changes"]["to_send"] for p in invoke(project, "plan", "--all")] == [0, 0, 0]
    held = plan_sync(project, "memberships", console=NullConsole()).changes.held_samples
    assert held == (
        (
            '{"id":"3"} globex',
            "object `globex` was not sent again by objects sync `companies` (its row was "
            "rejected): Customer.io may not hold it (a full resync, or a delete by hand "
            "since); held until it is sent again",
        ),
    )

    project_factory.sql("update companies set seats = '3' where company_id = 'globex'")
    fixed = invoke(project, "sync", "--all")
    assert [r["delivered"] for r in fixed] == [1, 0, 1]
    objects = {o.object_id: o.attributes for o in emu.objects()}
    assert objects["globex"] == {"name": "Globex", "plan": "free", "seats": 3}
    assert ("3", "1", "globex", "owner") in rels(emu)
    assert [p["changes"]["to_send"] for p in invoke(project, "plan", "--all")] == [0, 0, 0]


def test_a_relationship_held_for_an_object_a_full_resync_skipped_is_deleted_when_it_leaves(
    project_factory: ProjectFactory,
) -> None:
    """Globex's row is rejected during `sync --all --full-resync` (not deleted by hand: it is
    still in Customer.io, with user 3's membership). The membership is held, but stays
    delivered: once its row leaves the model it is deleted in Customer.io, not left there
    for good; globex keeps its attributes."""
    seed(project_factory)
    project_factory.sql(
        "create or replace table companies as "
        "select company_id, name, plan, seats::varchar as seats from companies"
    )
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    emu = project_factory.emulator
    project_factory.sql("update companies set seats = 'x' where company_id = 'globex'")
    runs = invoke(project, "sync", "--all", "--full-resync")
    assert [r["changes"]["held"] for r in runs] == [0, 0, 1]
    assert ("3", "1", "globex", "owner") in rels(emu)

    project_factory.sql("delete from members where user_id = 3")
    left = run_all(project)["memberships"]
    assert (left.changes.removed_sent, left.delivered) == (1, 1)
    assert rels(emu) == {("1", "1", "acme", "admin"), ("2", "1", "acme", "member")}
    objects = {o.object_id: o.attributes for o in emu.objects()}
    assert objects["globex"] == {"name": "Globex", "plan": "free", "seats": 3}


def test_relationships_come_back_with_a_deleted_person(project_factory: ProjectFactory) -> None:
    seed(project_factory)
    people = PEOPLE + "mode: mirror\ndelete_removed: true\n"
    project = project_factory.write(
        {"companies": COMPANIES, "people": people, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    emu = project_factory.emulator
    project_factory.sql("create table linus as select * from users where user_id = 3")
    project_factory.sql("delete from users where user_id = 3")
    gone = run_all(project)
    assert emu.person(id="3") is None and gone["memberships"].changes.held == 1
    project_factory.sql("insert into users select * from linus")
    back = run_all(project)
    assert back["memberships"].delivered == 1
    assert ("3", "1", "globex", "owner") in rels(emu)


def test_a_person_deleted_by_hand_gets_their_membership_back_once_their_company_is_sent(
    project_factory: ProjectFactory,
) -> None:
    """User 3 is deleted in Customer.io by hand (their membership of globex with them) while
    globex has two rows. A plain run sends nothing again (no row changed); `sync --all
    --full-resync` brings user 3 back but holds the membership, as it did not send globex
    again (Customer.io may not hold it); once globex has one row again, the next run sends
    globex, then the membership."""
    seed(project_factory)
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    emu = project_factory.emulator
    project_factory.sql("insert into companies values ('globex', 'Globex', 'free', 3)")
    with emu.client(auth=emu.track_auth) as client:
        client.delete("/api/v1/customers/3").raise_for_status()

    plain = invoke(project, "sync", "--all")
    assert [r["delivered"] for r in plain] == [0, 0, 0]
    resync = invoke(project, "sync", "--all", "--full-resync")
    assert [r["changes"]["held"] for r in resync] == [0, 0, 1]
    back = emu.person(id="3")
    assert back is not None and back.attributes == {"first_name": "Linus"}
    assert ("3", "1", "globex", "owner") not in rels(emu)

    project_factory.sql(
        "delete from companies where company_id = 'globex'; "
        "insert into companies values ('globex', 'Globex', 'free', 3)"
    )
    fixed = invoke(project, "sync", "--all")
    assert [r["delivered"] for r in fixed] == [1, 0, 1]
    assert ("3", "1", "globex", "owner") in rels(emu)


#: applied in full, then answered 503: every answer is lost
ANSWERS_LOST = FaultConfig(error_5xx=1.0, applied_then_failed=True)

ALL_RELATIONSHIPS = {
    ("1", "1", "acme", "admin"),
    ("2", "1", "acme", "member"),
    ("3", "1", "globex", "owner"),
}


def lose_a_delete(factory: ProjectFactory, kind: str) -> Any:
    """The three syncs delivered, then user 3 (``kind`` `people`) or company globex
    (`objects`) leaves its model and its mirror delete is applied with its answer lost; the
    project, with the row kept aside (table `gone`) to put back."""
    seed(factory)
    mirror = "mode: mirror\ndelete_removed: true\n"
    people, companies = (PEOPLE + mirror, COMPANIES)
    if kind == "objects":
        people, companies = (PEOPLE, COMPANIES + mirror)
    project = factory.write(
        {"companies": companies, "people": people, "memberships": MEMBERSHIPS}, retries=0
    )
    run_all(project)
    emu = factory.emulator
    assert rels(emu) == ALL_RELATIONSHIPS
    model, where = ("users", "user_id = 3")
    if kind == "objects":
        model, where = ("companies", "company_id = 'globex'")
    factory.sql(f"create table gone as select * from {model} where {where}")
    factory.sql(f"delete from {model} where {where}")
    emu.set_faults(ANSWERS_LOST)
    lost = run_sync(project, "people" if kind == "people" else "companies", console=NullConsole())
    assert (lost.status, lost.dead_lettered) == ("partial", 1)
    emu.set_faults(FaultConfig())
    # Customer.io deleted the record, and its relationships with it
    if kind == "people":
        assert emu.person(id="3") is None
    else:
        assert ("1", "globex") not in {(o.object_type_id, o.object_id) for o in emu.objects()}
    assert ("3", "1", "globex", "owner") not in rels(emu)
    return project


@pytest.mark.parametrize("kind", ["people", "objects"])
@pytest.mark.parametrize("relationships_meanwhile", [True, False], ids=["between", "after"])
def test_relationships_come_back_with_a_record_whose_delete_was_not_confirmed(
    project_factory: ProjectFactory, kind: str, relationships_meanwhile: bool
) -> None:
    """A mirror delete applied but never answered: the person (object) may be gone with its
    relationships. Whether the relationships sync runs while it may be gone (the relationship
    is held, naming why) or only once it is back, the relationship is sent again once the
    record is delivered again, and only that one."""
    project = lose_a_delete(project_factory, kind)
    emu = project_factory.emulator
    if relationships_meanwhile:
        meanwhile = run_sync(project, "memberships", console=NullConsole())
        assert (meanwhile.status, meanwhile.changes.to_send, meanwhile.changes.held) == (
            "success",
            0,
            1,
        )
        ((key, reason),) = meanwhile.changes.held_samples
        assert key == '{"id":"3"} globex'
        if kind == "people":
            assert reason == (
                'person {"id":"3"} may have been deleted, with their relationships: the people '
                "sync's delete of them was not confirmed; held until the person is delivered "
                "again"
            )
        else:
            assert reason == (
                "object `globex` may have been deleted, with its relationships: the objects "
                "sync's delete of it was not confirmed; held until the object is delivered again"
            )
    table = "users" if kind == "people" else "companies"
    project_factory.sql(f"insert into {table} select * from gone")
    back = run_all(project)
    assert all(r.status == "success" for r in back.values())
    assert back["memberships"].delivered == 1
    assert rels(emu) == ALL_RELATIONSHIPS
    assert all(r.changes.to_send == 0 for r in run_all(project).values())


def test_relationships_are_not_sent_again_for_a_person_whose_update_was_not_confirmed(
    project_factory: ProjectFactory,
) -> None:
    """Only a lost delete can have taken the relationships with it: a person whose identify
    was not confirmed is sent again, and their relationships are neither held nor re-sent."""
    seed(project_factory)
    people = PEOPLE + "mode: mirror\ndelete_removed: true\n"
    project = project_factory.write(
        {"companies": COMPANIES, "people": people, "memberships": MEMBERSHIPS}, retries=0
    )
    run_all(project)
    emu = project_factory.emulator
    project_factory.sql("update users set first_name = 'Linus T.' where user_id = 3")
    emu.set_faults(ANSWERS_LOST)
    lost = run_sync(project, "people", console=NullConsole())
    assert (lost.status, lost.dead_lettered) == ("partial", 1)
    emu.set_faults(FaultConfig())
    meanwhile = run_sync(project, "memberships", console=NullConsole())
    assert (meanwhile.changes.to_send, meanwhile.changes.held) == (0, 0)
    # the row goes back: the person is sent again only for being unconfirmed
    project_factory.sql("update users set first_name = 'Linus' where user_id = 3")
    again = run_all(project)
    assert (again["people"].changes.unconfirmed, again["people"].delivered) == (1, 1)
    assert (again["memberships"].changes.to_send, again["memberships"].changes.held) == (0, 0)
    assert rels(emu) == ALL_RELATIONSHIPS
    assert emu.person(id="3").attributes["first_name"] == "Linus"


def test_a_delete_lost_before_the_upgrade_still_holds_and_brings_back_the_relationships(
    project_factory: ProjectFactory,
) -> None:
    """State written before the unconfirmed records kept what was sent: the table gets its
    `action` column, filled from the history, so a person whose delete was lost then counts
    as maybe gone for the relationships sync, and their relationship comes back with them."""
    seed(project_factory)
    people = PEOPLE + "mode: mirror\ndelete_removed: true\n"
    project = project_factory.write(
        {"companies": COMPANIES, "people": people, "memberships": MEMBERSHIPS}, retries=0
    )
    run_all(project)
    emu = project_factory.emulator
    with StateStore.open(project.state_dir) as store:
        store.exec_sql('create table kept as select * from "snap__memberships"')
    project_factory.sql("create table linus as select * from users where user_id = 3")
    project_factory.sql("delete from users where user_id = 3")
    emu.set_faults(ANSWERS_LOST)
    assert run_sync(project, "people", console=NullConsole()).dead_lettered == 1
    emu.set_faults(FaultConfig())
    with StateStore.open(project.state_dir) as store:  # as the earlier version left it
        store.exec_sql(
            'delete from "snap__memberships"; insert into "snap__memberships" '
            "select * from kept; drop table kept;"
            'alter table "unconfirmed__people" drop column action;' + UNMARK_TABLES
        )
    meanwhile = run_sync(project, "memberships", console=NullConsole())
    assert meanwhile.changes.held == 1
    project_factory.sql("insert into users select * from linus")
    back = run_all(project)
    assert back["memberships"].delivered == 1
    assert rels(emu) == ALL_RELATIONSHIPS


def test_numeric_object_ids_name_the_object_by_its_integer(
    project_factory: ProjectFactory,
) -> None:
    """Company ids in a decimal column (`7.00`) name object `7` on both the object and the
    relationship, so the two meet; a fractional id rejects its row naming the column."""
    project_factory.sql(
        """
        create or replace table companies as select * from (values
          (7.00::decimal(10,2), 'Acme', 'pro', 25), (7.5, 'Half', 'free', 1)
        ) t(company_id, name, plan, seats);
        create or replace table users as select * from (values (1, 'Ada')) t(user_id, first_name);
        create or replace table members as select * from (values
          (1, 7.0::double, 'admin'), (1, 7.5::double, 'member')
        ) t(user_id, company_id, role);
        """
    )
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    reports = run_all(project)
    emu = project_factory.emulator
    assert {(o.object_type_id, o.object_id) for o in emu.objects()} == {("1", "7")}
    assert rels(emu) == {("1", "1", "7", "admin")}
    ((key, reason),) = reports["companies"].changes.rejected_samples
    assert key == "7.50"  # its own text, not `(null object id)`
    assert reason == (
        "column `company_id` (object id): value `7.50` is not a whole number; cast the column "
        "to bigint or text in the model"
    )
    ((_, reason),) = reports["memberships"].changes.rejected_samples
    assert reason == (
        "column `company_id` (object id): value `7.5` is not a whole number a float holds "
        "exactly (up to 2^53); cast the column to bigint or text in the model (while it is "
        "rejected, the relationships of its person that left the model as it came or changed "
        "are kept: it may be the row of one)"
    )


def test_json_values_over_1000_bytes_reject_the_object_or_relationship_naming_the_column(
    project_factory: ProjectFactory,
) -> None:
    """Object and relationship attributes have Customer.io's 1,000-byte value limit too: a
    json value over it rejects its row at mapping, naming the column; the others are sent."""
    project_factory.sql(
        """
        create or replace table companies as select * from (values
          ('acme', {'tier': 'gold', 'note': repeat('n', 975)}),  -- 1000 bytes
          ('globex', {'tier': 'free', 'note': repeat('n', 990)})
        ) t(company_id, profile);
        create or replace table users as select * from (values (1, 'Ada'), (2, 'Grace'))
          t(user_id, first_name);
        create or replace table members as select * from (values
          (1, 'acme', '{"scopes": ["billing"]}'),
          (2, 'acme', '{"scopes": ["' || repeat('s', 1000) || '"]}')
        ) t(user_id, company_id, grants);
        """
    )
    project = with_attributes(
        project_factory, "{profile: profile}", "{grants: {column: grants, type: json}}"
    )
    reports = run_all(project)
    assert [r.rejected_by_api for r in reports.values()] == [0, 0, 0]
    assert dict(reports["companies"].changes.rejected_samples) == {
        "globex": "column `profile` (field `profile`): value is 1015 bytes as sent, over the "
        "1000-byte limit of Customer.io; trim it in the model or map its parts to separate "
        "attributes"
    }
    [(_, reason)] = reports["memberships"].changes.rejected_samples
    assert reason.startswith("column `grants` (field `grants`): value is 1015 bytes as sent")
    emu = project_factory.emulator
    objects = {o.object_id: o.attributes for o in emu.objects()}
    assert objects == {"acme": {"profile": {"tier": "gold", "note": "n" * 975}}}
    by_cio = {p.cio_id: p.id for p in emu.people()}
    assert [(by_cio.get(r.person), r.object_id, r.attributes) for r in emu.relationships()] == [
        ("1", "acme", {"grants": {"scopes": ["billing"]}})
    ]


def test_relationship_attributes_over_100_kb_in_all_reject_the_relationship(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io holds an object's or a relationship's attributes to 100 KB in all: a
    relationship over it is rejected at mapping (it was refused by the API, per record, in
    words naming no row); the others are sent."""
    project_factory.sql(
        """
        create or replace table companies as select * from (values ('acme', 'Acme'))
          t(company_id, name);
        create or replace table users as select * from (values (1, 'Ada'), (2, 'Grace'))
          t(user_id, first_name);
        create or replace table members as select * from (values
          (1, 'acme', 'short'), (2, 'acme', repeat('n', 990))
        ) t(user_id, company_id, note);
        """
    )
    fields = ", ".join(f"n{i}: {{column: note}}" for i in range(101))
    reports = run_all(with_attributes(project_factory, "{name: name}", f"{{{fields}}}"))
    assert reports["memberships"].rejected_by_api == 0
    assert reports["memberships"].changes.rejected_samples == (
        ('{"id":"2"} acme', "relationship attributes are over 100000 bytes"),
    )
    emu = project_factory.emulator
    by_cio = {p.cio_id: p.id for p in emu.people()}
    assert [
        (by_cio.get(r.person), r.object_id, len(r.attributes)) for r in emu.relationships()
    ] == [("1", "acme", 101)]


def test_an_object_id_over_150_bytes_or_empty_is_rejected_by_relationships_too(
    project_factory: ProjectFactory,
) -> None:
    """Customer.io refuses an object id over 150 bytes. The objects sync rejects such a row,
    and so must a relationships sync: it was held forever, for an object "not among the
    objects sent", and without an objects sync sent and refused by Customer.io every run.
    An empty id is said to be empty, not null; the good rows go on."""
    long = "L" * 151
    project_factory.sql(
        f"""
        create or replace table companies as select * from (values
          ('acme', 'Acme', 'pro', 25), ('{long}', 'Long', 'pro', 1), ('', 'Empty', 'free', 1),
          (null, 'Null', 'free', 1)
        ) t(company_id, name, plan, seats);
        create or replace table users as select * from (values (1, 'Ada'), (2, 'Grace'))
          t(user_id, first_name);
        create or replace table members as select * from (values
          (1, 'acme', 'admin'), (2, '{long}', 'member'), (1, '', 'guest'), (2, null, 'guest')
        ) t(user_id, company_id, role);
        """
    )
    too_long = (
        "column `company_id`: object id is 151 bytes, over the 150-byte limit of Customer.io; "
        "shorten it in the model, the same way in the objects sync and the relationships "
        "syncs of its type"
    )
    reports = run_all(
        project_factory.write(
            {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
        )
    )
    assert dict(reports["companies"].changes.rejected_samples) == {
        long: too_long,
        "(empty object id)": "column `company_id`: object id is empty",
        "(null object id)": "column `company_id`: object id is null",
    }
    memberships = reports["memberships"]
    assert (memberships.changes.held, memberships.delivered) == (0, 1)
    kept = (
        "; fix it in the model or at the source (while it is rejected, the relationships of "
        "its person that left the model as it came or changed are kept: it may be the row of one)"
    )
    assert dict(memberships.changes.rejected_samples) == {
        f'{{"id":"2"}} {long}': too_long,
        '{"id":"1"} (empty object id)': "column `company_id`: object id is empty" + kept,
        '{"id":"2"} (null object id)': "column `company_id`: object id is null" + kept,
    }
    emu = project_factory.emulator
    assert {o.object_id for o in emu.objects()} == {"acme"}
    assert rels(emu) == {("1", "1", "acme", "admin")}

    # without an objects sync the object is assumed to exist: the row is still rejected here,
    # not sent for Customer.io to refuse on every run
    alone = run_sync(
        project_factory.write({"people": PEOPLE, "memberships": MEMBERSHIPS}),
        "memberships",
        console=NullConsole(),
    )
    assert (alone.status, alone.rejected_by_api) == ("success", 0)
    assert dict(alone.changes.rejected_samples)[f'{{"id":"2"}} {long}'] == too_long
    assert rels(emu) == {("1", "1", "acme", "admin")}


def test_a_run_of_named_relationships_keeps_the_others_delivered(
    project_factory: ProjectFactory,
) -> None:
    """`sync memberships --only 2` with companies and people syncs in the project: the
    relationships it does not name stay delivered. They were all dropped from the snapshot,
    so the next whole run sent every unchanged one again, and one that had left the model,
    waiting for that whole run, was never deleted."""
    seed(project_factory)
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    emu = project_factory.emulator
    project_factory.sql("delete from members where user_id in (2, 3)")
    named = run_sync(project, "memberships", console=NullConsole(), only=("2",), force=True)
    assert (named.changes.removed_sent, named.delivered) == (1, 1)
    assert rels(emu) == {("1", "1", "acme", "admin"), ("3", "1", "globex", "owner")}

    plan = plan_sync(project, "memberships", console=NullConsole())
    assert (plan.changes.new, plan.changes.unchanged, plan.changes.removed_sent) == (0, 1, 1)
    whole = run_sync(project, "memberships", console=NullConsole(), force=True)
    assert (whole.changes.to_send, whole.delivered) == (1, 1)
    assert rels(emu) == {("1", "1", "acme", "admin")}


USERS_BY_EMAIL = PEOPLE.replace("{id: user_id}", "{id: user_id, email: email}")


def test_a_person_without_an_email_does_not_let_unsynced_people_be_related(
    project_factory: ProjectFactory,
) -> None:
    """One person of the people sync has no email: a relationships sync keyed by email still
    holds the contact whose person was never sent (a SQL `not in` over a list holding that
    null matched nothing, so it was sent, and Customer.io made a stray email-only person)."""
    seed(project_factory)
    project_factory.sql(
        """
        create or replace table users as select * from (values
          (1, 'Ada', 'ada@x.io'), (2, 'Grace', null)) t(user_id, first_name, email);
        create or replace table contacts as select * from (values
          ('ada@x.io', 'acme', 'billing'), ('ghost@x.io', 'acme', 'legal')
        ) t(email, company_id, crm_role);
        """
    )
    project = project_factory.write(
        {"companies": COMPANIES, "people": USERS_BY_EMAIL, "crm_contacts": CRM_CONTACTS}
    )
    contacts = run_all(project)["crm_contacts"]
    assert (contacts.delivered, contacts.changes.held) == (1, 1)
    assert dict(contacts.changes.held_samples) == {
        '{"email":"ghost@x.io"} acme': 'person {"email":"ghost@x.io"} is not among the people '
        "sent (not synced yet, or they left the people sync's model)"
    }
    emu = project_factory.emulator
    assert emu.person(email="ghost@x.io") is None
    assert {(p.id, p.email) for p in emu.people()} == {("1", "ada@x.io"), ("2", None)}


@pytest.mark.parametrize("null_email", [False, True], ids=["emails", "one-null-email"])
@pytest.mark.parametrize("relationships_meanwhile", [True, False], ids=["between", "after"])
def test_a_deleted_person_gets_their_relationship_by_email_back(
    project_factory: ProjectFactory, null_email: bool, relationships_meanwhile: bool
) -> None:
    """A people sync in `mirror` with `delete_removed` deletes Ada, and Customer.io her
    relationships with her; when she is back, her relationship by email is sent again, though
    another person has no email (which hid her absence) and whether or not the relationships
    sync ran while she was gone (the people run that deletes her forgets them)."""
    seed(project_factory)
    other = "null" if null_email else "'grace@x.io'"
    project_factory.sql(
        f"""
        create or replace table users as select * from (values
          (1, 'Ada', 'ada@x.io'), (2, 'Grace', {other})) t(user_id, first_name, email);
        create or replace table contacts as select * from (values
          ('ada@x.io', 'acme', 'billing')) t(email, company_id, crm_role);
        """
    )
    people = USERS_BY_EMAIL + "mode: mirror\ndelete_removed: true\n"
    project = project_factory.write(
        {"companies": COMPANIES, "people": people, "crm_contacts": CRM_CONTACTS}
    )
    run_all(project)
    emu = project_factory.emulator
    contact = {
        (p.id, r.object_id, r.attributes.get("crm_role"))
        for r in emu.relationships()
        for p in emu.people()
        if p.cio_id == r.person
    }
    assert contact == {("1", "acme", "billing")}
    project_factory.sql("create table ada as select * from users where user_id = 1")
    project_factory.sql("delete from users where user_id = 1")
    run_sync(project, "people", console=NullConsole(), force=True)
    assert emu.person(id="1") is None and not emu.relationships()
    if relationships_meanwhile:
        meanwhile = run_sync(project, "crm_contacts", console=NullConsole())
        assert (meanwhile.changes.to_send, meanwhile.changes.held) == (0, 1)
    project_factory.sql("insert into users select * from ada")
    run_sync(project, "people", console=NullConsole())
    back = run_sync(project, "crm_contacts", console=NullConsole())
    assert back.delivered == 1
    ada = emu.person(id="1")
    assert ada is not None
    assert [(r.person, r.object_id) for r in emu.relationships()] == [(ada.cio_id, "acme")]
    assert run_sync(project, "crm_contacts", console=NullConsole()).changes.to_send == 0


@pytest.mark.parametrize("kind", ["objects", "people"])
def test_a_relationship_leaving_while_its_cleared_end_is_out_is_deleted(
    project_factory: ProjectFactory, kind: str
) -> None:
    """A `mirror` sync without `delete_removed` clears company globex (or user 3) that left
    its model: it still exists in Customer.io, with its relationships. The membership that
    leaves the model meanwhile is deleted at once; it was dropped unsent, and stayed in
    Customer.io for good. The others are not sent again when the record is back."""
    seed(project_factory)
    project_factory.sql("insert into members values (3, 'acme', 'viewer')")
    companies, people = COMPANIES, PEOPLE
    if kind == "objects":
        companies += "mode: mirror\n"
        model, where = ("companies", "company_id = 'globex'")
        leaves = "user_id = 3 and company_id = 'globex'"
    else:
        people += "mode: mirror\n"
        model, where = ("users", "user_id = 3")
        leaves = "user_id = 3 and company_id = 'acme'"
    project = project_factory.write(
        {"companies": companies, "people": people, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    emu = project_factory.emulator
    everyone = {
        ("1", "1", "acme", "admin"),
        ("2", "1", "acme", "member"),
        ("3", "1", "globex", "owner"),
        ("3", "1", "acme", "viewer"),
    }
    assert rels(emu) == everyone
    project_factory.sql(f"create table back as select * from {model} where {where}")
    project_factory.sql(f"delete from {model} where {where}; delete from members where {leaves}")
    out = run_all(project)
    assert all(r.status == "success" for r in out.values())
    left = ("3", "1", "globex", "owner") if kind == "objects" else ("3", "1", "acme", "viewer")
    assert (out["memberships"].changes.removed, out["memberships"].delivered) == (1, 1)
    assert rels(emu) == everyone - {left}
    if kind == "objects":
        assert {o.object_id: o.attributes for o in emu.objects()}["globex"] == {}
    else:
        assert emu.person(id="3").attributes == {}

    project_factory.sql(f"insert into {model} select * from back")
    again = run_all(project)
    assert again["memberships"].changes.to_send == 0
    assert rels(emu) == everyone - {left}


@pytest.mark.parametrize("mode", ["mirror", "upsert"])
def test_a_relationship_by_email_survives_its_email_changing_case(
    project_factory: ProjectFactory, mode: str
) -> None:
    """A relationships sync keyed by email: the model's email changes case (`ada@x.io` ->
    ` ADA@X.IO`), nothing else. Customer.io matches emails in any case, so it is the same
    person and the same relationship: no delete is sent (it could land after the add, and
    the relationship was gone from Customer.io while the snapshot held it), and it stays."""
    seed(project_factory)
    project_factory.sql(
        """
        create or replace table users as select * from (values
          (1, 'Ada', 'ada@x.io'), (2, 'Grace', 'grace@x.io')) t(user_id, first_name, email);
        create or replace table contacts as select * from (values
          ('ada@x.io', 'acme', 'billing'), ('grace@x.io', 'globex', 'legal')
        ) t(email, company_id, crm_role);
        """
    )
    project = project_factory.write(
        {
            "companies": COMPANIES,
            "people": USERS_BY_EMAIL,
            "crm_contacts": CRM_CONTACTS + f"mode: {mode}\n",
        }
    )
    run_all(project)
    emu = project_factory.emulator

    def contacts() -> set[tuple[str | None, str, Any]]:
        by_cio = {p.cio_id: p.id for p in emu.people()}
        return {
            (by_cio.get(r.person), r.object_id, r.attributes.get("crm_role"))
            for r in emu.relationships()
        }

    assert contacts() == {("1", "acme", "billing"), ("2", "globex", "legal")}
    requests = len(emu.request_log())
    project_factory.sql(
        "update contacts set email = ' ' || upper(email) || '\t' where company_id = 'acme'"
    )
    plan = plan_sync(project, "crm_contacts", console=NullConsole())
    assert (plan.changes.new, plan.changes.removed_sent) == (1, 0)
    report = run_sync(project, "crm_contacts", console=NullConsole())
    assert report.status == "success"
    sent = [op for r in emu.request_log()[requests:] for op in r.body.get("batch", [])]
    # the add under the new key goes again (harmless: Customer.io has it); no delete
    assert [(op["action"], op["identifiers"]) for op in sent] == [
        ("add_relationships", {"email": "ADA@X.IO"})
    ]
    assert contacts() == {("1", "acme", "billing"), ("2", "globex", "legal")}
    # and it settles: the next run sends nothing, the relationship still there
    again = run_sync(project, "crm_contacts", console=NullConsole())
    assert again.changes.to_send == 0 and again.changes.removed == 0
    assert contacts() == {("1", "acme", "billing"), ("2", "globex", "legal")}


def test_a_relationship_two_rows_carry_in_two_cases_stays_while_one_is_left(
    project_factory: ProjectFactory,
) -> None:
    """Two rows of a `mirror` relationships sync relate Ada to Acme, by `ada@x.io` and by
    `ADA@X.IO`: one relationship in Customer.io. One row leaving must not delete what the
    other still holds; the last one leaving does."""
    seed(project_factory)
    project_factory.sql(
        """
        create or replace table users as select * from (values
          (1, 'Ada', 'ada@x.io')) t(user_id, first_name, email);
        create or replace table contacts as select * from (values
          ('ada@x.io', 'acme', 'billing'), ('ADA@X.IO', 'acme', 'billing')
        ) t(email, company_id, crm_role);
        """
    )
    project = project_factory.write(
        {"companies": COMPANIES, "people": USERS_BY_EMAIL, "crm_contacts": CRM_CONTACTS}
    )
    run_all(project)
    emu = project_factory.emulator
    assert [r.object_id for r in emu.relationships()] == ["acme"]
    project_factory.sql("delete from contacts where email = 'ada@x.io'")
    one_left = run_sync(project, "crm_contacts", console=NullConsole())
    assert (one_left.changes.removed, one_left.changes.removed_sent) == (1, 0)
    assert [r.object_id for r in emu.relationships()] == ["acme"]
    project_factory.sql("delete from contacts")
    none_left = run_sync(project, "crm_contacts", console=NullConsole(), force=True)
    assert none_left.changes.removed_sent == 1
    assert not emu.relationships()


MEMBERS_BY_ID_OR_EMAIL = MEMBERSHIPS.replace("{id: user_id}", "{id: user_id, email: email}")


@pytest.mark.parametrize("change", ["id-goes-null", "id-comes"])
def test_a_relationship_whose_row_changes_identifier_is_not_deleted(
    project_factory: ProjectFactory, change: str
) -> None:
    """A relationships sync identified by `{id, email}` addresses a row by its `id`, else its
    email. Grace's membership losing its `id` (or a CRM contact known by email gaining one)
    sends it by the other identifier: the same person (the people sync delivered both), the
    same company. The old key leaving the model deleted it, in the batch after its add, so
    Customer.io no longer related her to Acme though the model still did."""
    seed(project_factory)
    had, has = ("2", "null") if change == "id-goes-null" else ("null", "2")
    project_factory.sql(
        f"""
        create or replace table users as select *, lower(first_name) || '@x.io' as email
        from users;
        create or replace table members as select * from (values
          (1, 'ada@x.io', 'acme', 'admin'), ({had}, 'grace@x.io', 'acme', 'member')
        ) t(user_id, email, company_id, role);
        """
    )
    project = project_factory.write(
        {"companies": COMPANIES, "people": USERS_BY_EMAIL, "memberships": MEMBERS_BY_ID_OR_EMAIL}
    )
    run_all(project)
    emu = project_factory.emulator
    both = {("1", "1", "acme", "admin"), ("2", "1", "acme", "member")}
    assert rels(emu) == both

    project_factory.sql(f"update members set user_id = {has} where email = 'grace@x.io'")
    plan = plan_sync(project, "memberships", console=NullConsole())
    report = run_sync(project, "memberships", console=NullConsole())
    assert rels(emu) == both
    for changes in (plan.changes, report.changes):
        assert (changes.new, changes.removed, changes.removed_sent) == (1, 1, 0)
    # the old key is forgotten once the new one is delivered: it does not leave again
    again = run_sync(project, "memberships", console=NullConsole()).changes
    assert (again.to_send, again.removed) == (0, 0)

    # once the row leaves the model, the relationship goes
    project_factory.sql("delete from members where email = 'grace@x.io'")
    gone = run_sync(project, "memberships", console=NullConsole())
    assert (gone.status, gone.changes.removed_sent) == ("success", 1)
    assert rels(emu) == {("1", "1", "acme", "admin")}


LOST_ID = {
    "null": "no identifier: `user_id` is null; fix it in the model or at the source",
    "2.5": "column `user_id` (identifier `id`): value `2.5` is not a whole number a float "
    "holds exactly (up to 2^53); cast the column to bigint or text in the model",
    "'nan'::double": "column `user_id` (identifier `id`): value `nan` is not a whole number a "
    "float holds exactly (up to 2^53); cast the column to bigint or text in the model",
}


@pytest.mark.parametrize("lost", LOST_ID)
def test_a_relationship_whose_id_goes_null_is_rejected_and_kept(
    project_factory: ProjectFactory, lost: str
) -> None:
    """A membership row whose `user_id` turns null (or, in a float column, a fraction) is
    rejected (no person to send it to), and it may be the row of Grace's membership of Acme,
    whose key (person and object) left the model: that relationship is not deleted, nor
    counted by `max_removed` (a limit of 0 does not stop the run). A membership of Acme whose
    row leaves later, while the rejected row stays as it was, is removed: that row was there
    beside it, so it is not its row. One that leaves as the rejected row changes is kept (it
    may be that one). Given an `id` again, the row is sent and what left is removed; once
    the row leaves, so is what it delivered."""
    seed(project_factory)
    project_factory.sql("alter table members alter user_id type double")
    memberships = MEMBERSHIPS + "guardrails: {max_removed: 0}\n"
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": memberships}
    )
    run_all(project)
    emu = project_factory.emulator
    delivered = {("1", "1", "acme", "admin"), ("2", "1", "acme", "member")}
    assert rels(emu) == {*delivered, ("3", "1", "globex", "owner")}

    project_factory.sql(f"update members set user_id = {lost} where user_id = 2")
    plan = plan_sync(project, "memberships", console=NullConsole())
    report = run_sync(project, "memberships", console=NullConsole())
    assert report.status == "success"
    for changes in (plan.changes, report.changes):
        assert (changes.rejected, changes.removed, changes.removed_sent) == (1, 1, 0)
        assert changes.rejected_samples == (
            (
                "(no person) acme",
                LOST_ID[lost] + " (while it is rejected, the relationships of its object that left "
                "the model as it came or changed are kept: it may be the row of one)",
            ),
        )
    assert rels(emu) == {*delivered, ("3", "1", "globex", "owner")}

    # Ada's row leaves while the row without an id stays as it was, which was there beside
    # hers: not hers, so her membership is removed (`max_removed` forced past); Grace's stays
    project_factory.sql("delete from members where user_id = 1")
    ada = run_sync(project, "memberships", console=NullConsole(), force=True)
    assert (ada.status, ada.changes.rejected, ada.changes.removed_sent) == ("success", 1, 1)
    assert rels(emu) == {("2", "1", "acme", "member"), ("3", "1", "globex", "owner")}

    # Linus joins Acme; then his row leaves as the row without an id changes: it may be
    # his, kept
    project_factory.sql("insert into members values (3, 'acme', 'viewer')")
    assert run_sync(project, "memberships", console=NullConsole()).delivered == 1
    project_factory.sql(
        "delete from members where role = 'viewer'; "
        f"update members set role = 'viewer' where user_id is not distinct from {lost}"
    )
    linus = run_sync(project, "memberships", console=NullConsole())
    assert (linus.status, linus.changes.removed, linus.changes.removed_sent) == ("success", 2, 0)
    held = {("2", "1", "acme", "member"), ("3", "1", "acme", "viewer")}
    assert rels(emu) == {*held, ("3", "1", "globex", "owner")}
    # and stays kept while the row stays rejected, changed or not
    assert run_sync(project, "memberships", console=NullConsole()).changes.removed_sent == 0
    assert rels(emu) == {*held, ("3", "1", "globex", "owner")}

    # the row gets Linus's id: his membership is the row's again, and Grace's is removed
    project_factory.sql(f"update members set user_id = 3 where user_id is not distinct from {lost}")
    fixed = run_sync(project, "memberships", console=NullConsole(), force=True)
    assert (fixed.status, fixed.changes.rejected, fixed.changes.removed_sent) == ("success", 0, 1)
    assert rels(emu) == {("3", "1", "acme", "viewer"), ("3", "1", "globex", "owner")}

    # null again, then the row leaves: what it delivered goes
    project_factory.sql(f"update members set user_id = {lost} where company_id = 'acme'")
    assert run_sync(project, "memberships", console=NullConsole()).changes.removed_sent == 0
    assert rels(emu) == {("3", "1", "acme", "viewer"), ("3", "1", "globex", "owner")}
    project_factory.sql("delete from members where company_id = 'acme'")
    left = run_sync(project, "memberships", console=NullConsole(), force=True)
    assert (left.status, left.changes.rejected, left.changes.removed_sent) == ("success", 0, 1)
    assert rels(emu) == {("3", "1", "globex", "owner")}


def test_a_relationship_leaving_beside_a_row_rejected_as_it_was_is_removed(
    project_factory: ProjectFactory,
) -> None:
    """A contact of Acme with no person (its `user_id` null) is rejected run after run. Its
    row was in the model beside Ada's, so when Ada's membership leaves the model it cannot
    be that row: it is removed, not kept until the rejected row is fixed or filtered out.
    Grace's, which left as the row came in (it may be hers), stays."""
    seed(project_factory)
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    emu = project_factory.emulator
    project_factory.sql("update members set user_id = null where user_id = 2")
    kept = run_sync(project, "memberships", console=NullConsole())
    assert (kept.changes.rejected, kept.changes.removed_sent) == (1, 0)
    assert run_sync(project, "memberships", console=NullConsole()).changes.to_send == 0

    project_factory.sql("delete from members where user_id = 1")
    report = run_sync(project, "memberships", console=NullConsole())
    assert rels(emu) == {("2", "1", "acme", "member"), ("3", "1", "globex", "owner")}
    assert (report.status, report.changes.rejected, report.changes.removed_sent) == (
        "success",
        1,
        1,
    )
    assert plan_sync(project, "memberships", console=NullConsole()).changes.to_send == 0


LOST_OBJECT = {
    "null": "column `company_id`: object id is null",
    "''": "column `company_id`: object id is empty",
    "'  '": "column `company_id`: object id is only white space",
}


@pytest.mark.parametrize("lost", LOST_OBJECT, ids=["null", "empty", "blank"])
def test_a_relationship_whose_object_id_goes_null_is_rejected_and_kept(
    project_factory: ProjectFactory, lost: str
) -> None:
    """A membership row of Grace whose `company_id` turns null (or empty, or blank) is
    rejected (no object to relate her to), and it may be the row of her membership of Acme,
    whose key (person and object) left the model: that relationship is not deleted, nor
    counted by `max_removed` (a limit of 0 does not stop the run). A membership of Grace
    whose row leaves later, while the rejected row stays as it was, is removed (that row was
    there beside it); given a company again, the row is sent and what left is removed; once
    the row leaves, so is what it delivered."""
    seed(project_factory)
    project_factory.sql("insert into members values (2, 'globex', 'guest')")
    memberships = MEMBERSHIPS + "guardrails: {max_removed: 0}\n"
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": memberships}
    )
    run_all(project)
    emu = project_factory.emulator
    delivered = {
        ("1", "1", "acme", "admin"),
        ("2", "1", "acme", "member"),
        ("2", "1", "globex", "guest"),
        ("3", "1", "globex", "owner"),
    }
    assert rels(emu) == delivered

    project_factory.sql(
        f"update members set company_id = {lost} where user_id = 2 and company_id = 'acme'"
    )
    plan = plan_sync(project, "memberships", console=NullConsole())
    report = run_sync(project, "memberships", console=NullConsole())
    assert report.status == "success"
    key = '{"id":"2"} ' + ("(null object id)" if lost == "null" else "(empty object id)")
    for changes in (plan.changes, report.changes):
        assert (changes.rejected, changes.removed, changes.removed_sent) == (1, 1, 0)
        assert changes.rejected_samples == (
            (
                key,
                LOST_OBJECT[lost] + "; fix it in the model or at the source (while it is "
                "rejected, the relationships of its person that left the model as it came or "
                "changed are kept: it may be the row of one)",
            ),
        )
    assert rels(emu) == delivered

    # Grace's Globex row leaves while her row without a company stays as it was, which was
    # there beside it: removed, as is Ada's (max_removed forced past); her Acme one stays
    project_factory.sql("delete from members where role in ('guest', 'admin')")
    left = run_sync(project, "memberships", console=NullConsole(), force=True)
    assert (left.status, left.changes.removed_sent) == ("success", 2)
    assert rels(emu) == {("2", "1", "acme", "member"), ("3", "1", "globex", "owner")}

    # the row gets Globex: sent, and her Acme membership, which left, is removed
    project_factory.sql(
        f"update members set company_id = 'globex' where company_id is not distinct from {lost}"
    )
    fixed = run_sync(project, "memberships", console=NullConsole(), force=True)
    assert (fixed.status, fixed.changes.rejected, fixed.changes.removed_sent) == ("success", 0, 1)
    assert rels(emu) == {("2", "1", "globex", "member"), ("3", "1", "globex", "owner")}

    # no company again, then the row leaves: what it delivered goes
    project_factory.sql(f"update members set company_id = {lost} where user_id = 2")
    assert run_sync(project, "memberships", console=NullConsole()).changes.removed_sent == 0
    assert rels(emu) == {("2", "1", "globex", "member"), ("3", "1", "globex", "owner")}
    project_factory.sql("delete from members where user_id = 2")
    gone = run_sync(project, "memberships", console=NullConsole(), force=True)
    assert (gone.status, gone.changes.rejected, gone.changes.removed_sent) == ("success", 0, 1)
    assert rels(emu) == {("3", "1", "globex", "owner")}


def test_a_relationship_row_with_neither_person_nor_object_keeps_nothing(
    project_factory: ProjectFactory,
) -> None:
    """A membership row whose `user_id` and `company_id` both turn null names no
    relationship of anyone: it is rejected, its reason does not promise to keep anything,
    and Grace's membership of Acme, which left, is removed as usual."""
    seed(project_factory)
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    emu = project_factory.emulator

    project_factory.sql("update members set user_id = null, company_id = null where user_id = 2")
    report = run_sync(project, "memberships", console=NullConsole())
    assert (report.status, report.changes.rejected, report.changes.removed_sent) == (
        "success",
        1,
        1,
    )
    assert report.changes.rejected_samples == (
        (
            "(no person) (null object id)",
            "no identifier: `user_id` is null; fix it in the model or at the source",
        ),
    )
    assert rels(emu) == {("1", "1", "acme", "admin"), ("3", "1", "globex", "owner")}


@pytest.mark.parametrize("lost", ["null", "''"], ids=["null", "empty"])
def test_a_relationship_kept_for_a_row_without_object_stays_delivered_through_a_full_resync(
    project_factory: ProjectFactory, lost: str
) -> None:
    """A relationship kept while a row of its person is rejected with no object is still in
    Customer.io: a `--full-resync` keeps it delivered, so it is removed once the row leaves
    (forgotten with the rest of the snapshot, it would stay in Customer.io for good)."""
    seed(project_factory)
    project = project_factory.write(
        {"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    emu = project_factory.emulator
    delivered = {
        ("1", "1", "acme", "admin"),
        ("2", "1", "acme", "member"),
        ("3", "1", "globex", "owner"),
    }

    project_factory.sql(f"update members set company_id = {lost} where user_id = 2")
    resync = run_sync(project, "memberships", console=NullConsole(), full_resync=True)
    assert (resync.changes.rejected, resync.changes.removed_sent) == (1, 0)
    assert rels(emu) == delivered
    again = run_sync(project, "memberships", console=NullConsole())
    assert (again.changes.to_send, again.changes.removed_sent) == (0, 0)

    project_factory.sql("delete from members where user_id = 2")
    left = run_sync(project, "memberships", console=NullConsole())
    assert (left.changes.rejected, left.changes.removed_sent) == (0, 1)
    assert rels(emu) == delivered - {("2", "1", "acme", "member")}


@pytest.mark.parametrize("only", [False, True], ids=["all", "only"])
@pytest.mark.parametrize("kind", ["objects", "people"])
def test_a_full_resync_keeps_a_relationship_whose_cleared_end_is_out(
    project_factory: ProjectFactory, kind: str, only: bool
) -> None:
    """Company globex (or user 3) left its `mirror` model and was cleared: it still exists in
    Customer.io, with user 3's membership, which the memberships run holds. A
    `--full-resync` of the memberships forgot it with the rest of the snapshot, so when the
    membership then left the model nothing deleted it: Customer.io kept it for good."""
    seed(project_factory)
    companies, people = COMPANIES, PEOPLE
    if kind == "objects":
        companies += "mode: mirror\n"
        leaves = "delete from companies where company_id = 'globex'"
    else:
        people += "mode: mirror\n"
        leaves = "delete from users where user_id = 3"
    project = project_factory.write(
        {"companies": companies, "people": people, "memberships": MEMBERSHIPS}
    )
    run_all(project)
    emu = project_factory.emulator
    project_factory.sql(leaves)
    run_all(project)
    assert ("3", "1", "globex", "owner") in rels(emu)  # cleared, not deleted

    named = ("3",) if only else ()
    plan = plan_sync(project, "memberships", console=NullConsole(), full_resync=True, only=named)
    resync = run_sync(project, "memberships", console=NullConsole(), full_resync=True, only=named)
    assert plan.changes.held == resync.changes.held == 1
    project_factory.sql("delete from members where user_id = 3")
    gone = run_sync(project, "memberships", console=NullConsole())
    assert (gone.changes.removed, gone.changes.removed_sent, gone.delivered) == (1, 1, 1)
    assert rels(emu) == {("1", "1", "acme", "admin"), ("2", "1", "acme", "member")}


def test_relationships_held_because_no_people_sync_sends_their_identifier_say_so(
    project_factory: ProjectFactory,
) -> None:
    """The people sync sends people by email alone, the memberships name them by `id`: every
    membership is held for good, and the reason said only `not synced yet, or they left the
    people sync's model`, which no run would ever change. It now names the missing
    identifier and what to change."""
    seed(project_factory)
    project_factory.sql(
        "create or replace table users as select *, lower(first_name) || '@x.io' as email "
        "from users"
    )
    by_email = PEOPLE.replace("{id: user_id}", "{email: email}")
    project = project_factory.write(
        {"companies": COMPANIES, "people": by_email, "memberships": MEMBERSHIPS}
    )
    memberships = run_all(project)["memberships"]
    assert (memberships.delivered, memberships.changes.held) == (0, 3)
    reason = dict(memberships.changes.held_samples)['{"id":"1"} acme']
    assert reason == (
        'person {"id":"1"} is not among the people sent (not synced yet, or they left the '
        "people sync's model; no people sync has sent anyone by `id` yet: relate them by an "
        "identifier the people syncs send, or add `id` to a people sync's `identify_by`)"
    )


@pytest.mark.parametrize(
    "relationships", ["{role: role}", "{role: role, source: {value: crm}}"], ids=["plain", "const"]
)
def test_a_relationship_whose_attributes_all_went_null_is_not_sent_again(
    project_factory: ProjectFactory, relationships: str
) -> None:
    """Under `on_null: skip` a relationship delivered before whose attributes all became null
    (its constants as last delivered) has nothing to send: `add_relationships` again would
    only repeat a relationship Customer.io holds. It counts as changed only to nulls, in the
    plan as in the run, is recorded, and a later real value is sent."""
    seed(project_factory)
    project = with_attributes(
        project_factory,
        "{name: name, plan: plan, seats: {column: seats, type: integer}}",
        relationships,
    )
    run_all(project)
    project_factory.sql("update members set role = null where user_id = 1")
    plan = plan_sync(project, "memberships", console=NullConsole())
    assert (plan.changes.changed, plan.changes.nulls_only, plan.samples) == (0, 1, ())
    assert ("  of which changed only to nulls (nothing to send)", 1) in change_rows(plan)

    emu = project_factory.emulator
    since = len(emu.request_log())
    report = run_sync(project, "memberships", console=NullConsole())
    assert [op for op in sent_ops(emu, since) if op["identifiers"] == {"id": "1"}] == []
    assert (report.changes.nulls_only, report.delivered) == (1, 0)
    assert report.changes.as_dict() | {"rows_copied": 0} == plan.changes.as_dict() | {
        "rows_copied": 0
    }
    assert ("1", "1", "acme", "admin") in rels(emu)  # kept
    again = run_sync(project, "memberships", console=NullConsole())
    assert (again.changes.to_send, again.changes.nulls_only) == (0, 0)
    assert len(emu.request_log()) == since

    project_factory.sql("update members set role = 'owner' where user_id = 1")
    assert run_sync(project, "memberships", console=NullConsole()).delivered == 1
    assert ("1", "1", "acme", "owner") in rels(emu)


def test_a_relationship_held_while_its_constant_changed_gets_it_when_gone_to_nulls(
    project_factory: ProjectFactory,
) -> None:
    """Company globex leaves a `mirror` objects sync (cleared, still in Customer.io with its
    relationships) in the run that edits the memberships' constant: globex's membership is
    held then, and keeps the old constant in Customer.io. When globex is back with the
    membership's role gone null, the membership is sent with the new constant."""
    seed(project_factory)
    companies = COMPANIES + "mode: mirror\n"
    memberships = MEMBERSHIPS.replace("{role: role}", "{role: role, source: {value: crm}}")
    project = project_factory.write(
        {"companies": companies, "people": PEOPLE, "memberships": memberships}
    )
    run_all(project)
    emu = project_factory.emulator
    project_factory.sql(
        "create table back as select * from companies where company_id = 'globex'; "
        "delete from companies where company_id = 'globex'"
    )
    project = project_factory.write(
        {"companies": companies, "people": PEOPLE, "memberships": memberships.replace("crm", "erp")}
    )
    edited = run_all(project)["memberships"]
    assert (edited.changes.held, edited.delivered) == (1, 2)

    project_factory.sql(
        "insert into companies select * from back; update members set role = null where user_id = 3"
    )
    since = len(emu.request_log())
    back = run_all(project)["memberships"]
    assert (back.changes.nulls_only, back.delivered) == (0, 1)
    sent = [op for op in sent_ops(emu, since) if op.get("action") == "add_relationships"]
    assert [op["cio_relationships"][0]["relationship_attributes"] for op in sent] == [
        {"source": "erp"}
    ]
    attrs = {r.object_id: r.attributes for r in emu.relationships()}
    assert attrs["globex"] == {"role": "owner", "source": "erp"}


def rejected_globex(factory: ProjectFactory, *, by_hand: bool) -> Any:
    """The three syncs delivered; then globex has two rows (rejected), is deleted in
    Customer.io by hand (``by_hand``, user 3's membership of it with it), and user 3's
    membership row changes: the project."""
    seed(factory)
    project = factory.write({"companies": COMPANIES, "people": PEOPLE, "memberships": MEMBERSHIPS})
    run_all(project)
    factory.sql("insert into companies values ('globex', 'Globex', 'free', 3)")
    if by_hand:
        delete_object_by_hand(factory.emulator, "globex")
    factory.sql("update members set role = 'admin' where user_id = 3")
    return project


def test_a_membership_of_a_company_whose_row_is_rejected_does_not_create_it_empty(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """globex has two rows (rejected) and is deleted in Customer.io by hand, with user 3's
    membership of it; then that membership's row changes. Its `add_relationships` would
    create globex again, empty (Customer.io creates an object a relationship names), and
    `--full-resync` could not mend it while globex's row is rejected: the run looks globex up
    (an App API key), finds it gone and holds the membership, saying why. Once globex has one
    row again the objects sync sends it again (its row unchanged: it may be gone), then the
    membership goes."""
    emu = project_factory.emulator
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emu.config.app_api_key)
    project = rejected_globex(project_factory, by_hand=True)

    held = run_all(project)
    assert {o.object_id for o in emu.objects()} == {"acme"}
    assert ("3", "1", "globex", "admin") not in rels(emu)
    assert [r.changes.held for r in held.values()] == [0, 0, 1]
    [(_, reason)] = held["memberships"].changes.held_samples
    assert reason.startswith("object `globex` is not in Customer.io (deleted there since")
    # the next run holds it too, without looking it up again
    again = invoke(project, "sync", "--all")
    assert [r["changes"]["held"] for r in again] == [0, 0, 1]
    assert {o.object_id for o in emu.objects()} == {"acme"}

    project_factory.sql(
        "delete from companies where company_id = 'globex'; "
        "insert into companies values ('globex', 'Globex', 'free', 3)"
    )
    fixed = invoke(project, "sync", "--all")
    assert [r["delivered"] for r in fixed] == [1, 0, 1]
    globex = {"name": "Globex", "plan": "free", "seats": 3}
    assert {o.object_id: o.attributes for o in emu.objects()}["globex"] == globex
    assert ("3", "1", "globex", "admin") in rels(emu)


def test_a_membership_of_a_company_whose_row_is_rejected_is_sent_while_customerio_holds_it(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """globex has two rows (rejected) but Customer.io still holds it: the changed membership
    is sent (looked up first), and globex keeps its attributes."""
    emu = project_factory.emulator
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emu.config.app_api_key)
    project = rejected_globex(project_factory, by_hand=False)

    sent = invoke(project, "sync", "--all")
    assert [(r["delivered"], r["changes"]["held"]) for r in sent] == [(0, 0), (0, 0), (1, 0)]
    assert ("3", "1", "globex", "admin") in rels(emu)
    globex = {"name": "Globex", "plan": "free", "seats": 3}
    assert {o.object_id: o.attributes for o in emu.objects()}["globex"] == globex


def test_without_an_app_api_key_a_membership_of_a_company_whose_row_is_rejected_waits(
    project_factory: ProjectFactory,
) -> None:
    """Without an App API key Lockgate cannot tell whether globex (its row rejected) is still
    in Customer.io: the changed membership waits for globex to be sent again, rather than
    risk creating it empty, and the reason says how to have it looked up."""
    emu = project_factory.emulator
    project = rejected_globex(project_factory, by_hand=True)
    run_sync(project, "companies", console=NullConsole())  # records globex's row rejected
    # the plan holds the membership as the run does: without a key nothing is looked up
    plan = plan_sync(project, "memberships", console=NullConsole()).changes
    assert (plan.held, plan.to_send) == (1, 0)

    held = run_all(project)
    assert {o.object_id for o in emu.objects()} == {"acme"}
    assert [r.changes.held for r in held.values()] == [0, 0, 1]
    [(_, reason)] = held["memberships"].changes.held_samples
    assert reason.startswith("the row of object `globex` is rejected by objects sync")
    assert "set `CUSTOMERIO_APP_API_KEY` (an App API key) to look it up" in reason
    assert plan.held_samples == held["memberships"].changes.held_samples  # as the run held it

    project_factory.sql(
        "delete from companies where company_id = 'globex'; "
        "insert into companies values ('globex', 'Globex', 'free', 3)"
    )
    fixed = invoke(project, "sync", "--all")
    assert [r["delivered"] for r in fixed] == [1, 0, 1]
    assert ("3", "1", "globex", "admin") in rels(emu)
