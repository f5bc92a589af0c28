"""Attribute and property names Customer.io would refuse or misread fail at load time.

Each case is a sync file Customer.io would refuse on every row (a name over 150 bytes, more
than 300 attributes in one identify) or read as something other than an attribute (`id`,
`_update`, an event property `recipient`...). The error names the file, the key's line, the
reason and the fix, before anything is sent.
"""

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

PEOPLE = """\
name: profile
source: warehouse
model: {table: customers}
kind: people
primary_key: id
identify_by: {id: id}
attributes:
"""

OBJECTS = """\
name: profile
source: warehouse
model: {table: companies}
kind: objects
object_type_id: "1"
primary_key: company_id
attributes:
"""

RELATIONSHIPS = """\
name: profile
source: warehouse
model: {table: members}
kind: relationships
object_type_id: "1"
object_id: company_id
identify_by: {id: user_id}
relationship_attributes:
"""

EVENTS = """\
name: profile
source: warehouse
model: {table: product_events}
kind: events
identify_by: {id: user_id}
event: {name: event_name, id: event_id}
properties:
"""


def write(root: Path, sync: str) -> Path:
    (root / "syncs").mkdir(exist_ok=True)
    (root / "lockgate.yml").write_text(PROJECT)
    (root / "syncs" / ("orders.yml" if "name: orders" in sync else "profile.yml")).write_text(sync)
    return root


def error_for(root: Path, sync: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_project(write(root, sync))
    return caught.value


def fields(names: list[str]) -> str:
    """YAML lines mapping each name to a column (quoted: names may hold any character)."""
    return "".join(f'  "{name}": plan\n' for name in names)


# ------------------------------------------------------------------------------ names


def test_an_attribute_name_over_150_bytes_of_utf8_is_refused_at_its_line(tmp_path: Path) -> None:
    # 76 characters, 152 bytes: the limit is in bytes, so `é` counts twice
    long = "é" * 76
    error = error_for(tmp_path, PEOPLE + fields(["plan", long]))
    assert error.location == "syncs/profile.yml:9"
    assert "is 152 bytes" in error.reason and "over 150 bytes" in error.reason
    assert "short_name: {column: ...}" in error.reason
    # exactly 150 bytes is what Customer.io takes
    load_project(write(tmp_path, PEOPLE + fields(["é" * 75])))


@pytest.mark.parametrize(
    ("sync", "what"),
    [
        (OBJECTS, "attribute"),
        (RELATIONSHIPS, "relationship attribute"),
        (EVENTS, "event property"),
    ],
)
def test_long_names_are_refused_in_every_kind(tmp_path: Path, sync: str, what: str) -> None:
    error = error_for(tmp_path, sync + fields(["x" * 151]))
    assert error.location == f"syncs/profile.yml:{sync.count(chr(10)) + 1}"
    assert f"{what} name `{'x' * 40}…` is 151 bytes" in error.reason


def test_an_on_change_event_property_name_is_checked_too(tmp_path: Path) -> None:
    sync = (
        PEOPLE
        + fields(["status"])
        + (
            "on_change:\n"
            "  - attribute: status\n"
            "    event: status_changed\n"
            f"    properties: {{{'p' * 151}: status}}\n"
        )
    )
    error = error_for(tmp_path, sync)
    assert error.location == "syncs/profile.yml:12"
    assert "event property name" in error.reason and "151 bytes" in error.reason


def test_an_empty_name_is_refused(tmp_path: Path) -> None:
    error = error_for(tmp_path, PEOPLE + fields(["plan", " "]))
    assert error.location == "syncs/profile.yml:9"
    assert "attribute name is empty" in error.reason


# ------------------------------------------------------------------------------ counts


def test_more_than_300_attributes_counts_the_email_lockgate_adds(tmp_path: Path) -> None:
    names = [f"a{i}" for i in range(300)]
    by_email = PEOPLE.replace("{id: id}", "{id: id, email: email}")
    error = error_for(tmp_path, by_email + fields(names))
    assert error.location == "syncs/profile.yml:7"
    assert "301 attributes in one call (with the `email` that `identify_by` adds)" in error.reason
    assert "cannot identify more than 300 attributes in one request" in error.reason
    # 300 are fine: without the implicit email, or with `email` among them
    load_project(write(tmp_path, PEOPLE + fields(names)))
    load_project(write(tmp_path, by_email + fields(names[:299]) + "  email: email\n"))


@pytest.mark.parametrize(
    ("mode", "added"),
    [
        ("update", "the `_update: true` of `mode: update`"),
        (
            "mirror",
            "the `_update: true` that clears a person who leaves the model in `mode: mirror`",
        ),
    ],
)
def test_300_attributes_and_the_update_key_of_update_or_mirror_are_refused(
    tmp_path: Path, mode: str, added: str
) -> None:
    """`mode: update` and a mirror removal put `_update: true` in the same `attributes` object:
    300 mapped made 301 keys, and Customer.io refused every such call, run after run."""
    names = [f"a{i}" for i in range(300)]
    sync = PEOPLE.replace("attributes:\n", f"mode: {mode}\nattributes:\n")
    error = error_for(tmp_path, sync + fields(names))
    assert error.location == "syncs/profile.yml:8"
    assert error.reason.startswith(
        f"301 attributes in one call (with {added}); Customer.io refuses more than 300"
    )
    assert "Map at most 299" in error.reason
    load_project(write(tmp_path, sync + fields(names[:299])))
    # a mirror that deletes people who leave sends no `_update`
    deleting = sync.replace("mode: mirror\n", "mode: mirror\ndelete_removed: true\n")
    if mode == "mirror":
        load_project(write(tmp_path, deleting + fields(names)))


@pytest.mark.parametrize(
    ("sync", "what"),
    [(OBJECTS, "attributes"), (RELATIONSHIPS, "relationship attributes")],
)
def test_more_than_300_object_or_relationship_attributes(
    tmp_path: Path, sync: str, what: str
) -> None:
    error = error_for(tmp_path, sync + fields([f"a{i}" for i in range(301)]))
    assert f"301 {what} in one call; Customer.io refuses more than 300" in error.reason


# ------------------------------------------------------------------------------ reserved keys


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        ("id", "identify_by: {id: COLUMN}"),
        ("cio_id", "identify_by: {cio_id: COLUMN}"),
        ("anonymous_id", "identity:"),
        ("_update", "mode: update"),
        ("_timestamp", "rename the attribute"),
        ("cio_relationships", "relationships` sync"),
        ("_relationship", "rename the attribute"),
    ],
)
def test_reserved_people_keys_are_refused_with_the_fix(tmp_path: Path, name: str, fix: str) -> None:
    error = error_for(tmp_path, PEOPLE + fields(["plan", name]))
    assert error.location == "syncs/profile.yml:9"
    assert error.reason.startswith(f"attribute `{name}` is reserved: ")
    assert fix in error.reason


def test_documented_people_attributes_load_next_to_a_refused_id(tmp_path: Path) -> None:
    names = [
        "email",
        "created_at",
        "unsubscribed",
        "cio_subscription_preferences",
        "cio_subscription_preferences.topics.topic_3",
    ]
    sync = load_project(write(tmp_path, PEOPLE + fields(names))).sync("profile")
    assert list(sync.attributes) == names
    error = error_for(tmp_path, PEOPLE + fields([*names, "id"]))
    assert error.location == "syncs/profile.yml:13" and "`id` is reserved" in error.reason


@pytest.mark.parametrize(
    ("field", "said"),
    [
        ("email: contact_email", "attribute `email` (column `contact_email`)"),
        ("email: {value: ops@x.com}", "attribute `email` (the constant `ops@x.com`)"),
        (
            "email: {column: email, type: json}",
            "attribute `email` (column `email` as `type: json`)",
        ),
    ],
)
def test_an_email_attribute_that_would_replace_the_identify_by_email_is_refused(
    tmp_path: Path, field: str, said: str
) -> None:
    """Sent next to `identify_by: {email: ...}`, an `email` attribute of another column
    replaced the person's email with its own and the identify_by email was never sent."""
    by_email = PEOPLE.replace("{id: id}", "{id: id, email: email}")
    error = error_for(tmp_path, by_email + "  plan: plan\n  " + field + "\n")
    assert error.location == "syncs/profile.yml:9"
    assert error.reason.startswith(
        f"{said} and `identify_by: {{email: email}}` both set the person's `email`"
    )
    assert "Rename the attribute (e.g. `contact_email: ...`), or take `email` out of" in (
        error.reason
    )
    # the same column, as text, is the same email; without an identify_by email, any is fine
    for same in ("email: email", "email: {column: email, type: string, on_null: clear}"):
        load_project(write(tmp_path, by_email + "  " + same + "\n"))
    load_project(write(tmp_path, PEOPLE + "  " + field + "\n"))


@pytest.mark.parametrize(
    "name", ["object_id", "objectId", "cio_object_id", "relationship", "_relationship"]
)
def test_reserved_object_and_relationship_attributes(tmp_path: Path, name: str) -> None:
    assert "is reserved" in error_for(tmp_path, OBJECTS + fields([name])).reason
    error = error_for(tmp_path, RELATIONSHIPS + fields([name]))
    assert error.reason.startswith(f"relationship attribute `{name}` is reserved")
    # an object may well have an attribute called `id` or `created_at`
    load_project(write(tmp_path, OBJECTS + fields(["id", "created_at"])))


# ------------------------------------------------------------------------------ message overrides


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("recipient", "the recipient"),
        ("from_address", "the sender"),
        ("reply_to", "the reply-to address"),
    ],
)
def test_message_override_properties_need_an_acknowledgment(
    tmp_path: Path, name: str, what: str
) -> None:
    error = error_for(tmp_path, EVENTS + fields(["plan", name]))
    assert error.location == "syncs/profile.yml:9"
    assert f"event property `{name}` overrides {what}" in error.reason
    assert "allow_message_overrides: true" in error.reason
    acknowledged = EVENTS.replace("properties:", "allow_message_overrides: true\nproperties:")
    sync = load_project(write(tmp_path, acknowledged + fields([name]))).sync("profile")
    assert name in sync.properties


def test_an_on_change_event_overriding_the_sender_needs_the_acknowledgment_too(
    tmp_path: Path,
) -> None:
    on_change = (
        "on_change:\n"
        "  - attribute: owner_email\n"
        "    event: owner_changed\n"
        "    properties: {from_address: owner_email}\n"
    )
    error = error_for(tmp_path, PEOPLE + fields(["owner_email"]) + on_change)
    assert error.location == "syncs/profile.yml:12"
    assert "`allow_message_overrides: true`" in error.reason
    acknowledged = PEOPLE + fields(["owner_email"]) + on_change + "allow_message_overrides: true\n"
    assert load_project(write(tmp_path, acknowledged)).sync("profile").allow_message_overrides


# ------------------------------------------------------------------------- event names and ids

EVENT_HEAD = """\
name: orders
source: warehouse
model: {table: orders}
kind: events
identify_by: {id: user_id}
"""

ONE_NAME = "exactly one of `column` and `value`"
ONE_ID = "exactly one of `column` and `hash`"


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        # a constant every row would be rejected for, run after run
        ("{name: {value: '  '}, id: order_id}", "event name is blank"),
        ("{name: {value: ''}, id: order_id}", "event name is blank"),
        (f"{{name: {{value: {'é' * 51}}}, id: order_id}}", "is 102 bytes"),
        # two answers to one question: one of them was silently ignored
        ("{name: {column: what, value: Order Placed}, id: order_id}", ONE_NAME),
        ("{name: {}, id: order_id}", ONE_NAME),
        ("{name: what, id: {column: order_id, hash: [order_id, line]}}", ONE_ID),
        ("{name: what, id: {hash: []}}", ONE_ID),
        ("{name: what, id: {}}", ONE_ID),
    ],
)
def test_an_event_name_or_id_customerio_or_lockgate_cannot_use_fails_at_load(
    tmp_path: Path, event: str, reason: str
) -> None:
    error = error_for(tmp_path, EVENT_HEAD + f"event: {event}\n")
    assert error.location == "syncs/orders.yml:6"
    assert reason in error.reason, error.reason


def test_an_event_name_of_100_bytes_is_taken(tmp_path: Path) -> None:
    load_project(write(tmp_path, EVENT_HEAD + f"event: {{name: {{value: {'é' * 50}}}, id: o}}\n"))


@pytest.mark.parametrize(
    ("event", "reason"), [("' '", "event name is blank"), ("x" * 101, "is 101 bytes")]
)
def test_an_on_change_event_name_customerio_refuses_fails_at_load(
    tmp_path: Path, event: str, reason: str
) -> None:
    sync = PEOPLE + fields(["status"]) + f"on_change:\n  - attribute: status\n    event: {event}\n"
    error = error_for(tmp_path, sync)
    assert error.location == "syncs/profile.yml:11"
    assert reason in error.reason, error.reason
