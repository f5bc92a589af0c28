"""Rejected rows: every one counted and grouped by reason, kept for `lockgate runs show`, all of
them exported by `lockgate plan --export-rejected`, and sent once they are fixed."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lockgate.cli import cli
from lockgate.errors import LockgateError
from lockgate.sync import rejects

ProjectFactory = Any  # the `project_factory` fixture (tests/sync/conftest.py)

PROFILE = """
name: profile
source: warehouse
model: {table: users}
kind: people
primary_key: user_id
identify_by: {email: email}
attributes:
  plan: plan
"""

BAD_EMAILS = 1100  # more than the state keeps of one run (rejects.KEPT_PER_RUN)
NULL_KEYS = 50
GOOD = 100


def users(factory: ProjectFactory, *, fixed: bool = False) -> None:
    """``GOOD`` good rows, ``BAD_EMAILS`` rows whose email is not one (each its own value)
    unless ``fixed``, and ``NULL_KEYS`` rows without a key."""
    email = "'u' || i || '@example.com'" if fixed else "'not-an-email-' || i"
    factory.sql(
        f"""
        create or replace table users as
        select i::varchar as user_id, 'u' || i || '@example.com' as email, 'pro' as plan
        from range({GOOD}) t(i)
        union all
        select i::varchar, {email}, 'pro' from range(1000, 1000 + {BAD_EMAILS}) t(i)
        union all
        select null, 'nokey' || i || '@example.com', 'pro' from range({NULL_KEYS}) t(i)
        """
    )


def invoke(project: Any, *args: str) -> str:
    result = CliRunner().invoke(
        cli, [*args, "--project", str(project.root)], catch_exceptions=False, standalone_mode=False
    )
    assert result.exit_code in (0, None), result.output
    return result.output


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_every_rejected_row_is_counted_grouped_kept_and_sent_once_fixed(
    project_factory: ProjectFactory, tmp_path: Path
) -> None:
    users(project_factory)
    project = project_factory.write({"profile": PROFILE})

    # a plan writes every row the mapping would reject, with its reason
    invoke(project, "plan", "profile", "--json", "--export-rejected", str(tmp_path / "plan.csv"))
    planned = read_csv(tmp_path / "plan.csv")
    assert len(planned) == BAD_EMAILS + NULL_KEYS
    assert {r["key"] for r in planned if "email" in r["reason"]} == {
        str(i) for i in range(1000, 1000 + BAD_EMAILS)
    }
    assert next(r for r in planned if r["key"] == "1007") == {
        "sync": "profile",
        "key": "1007",
        "reason": "column `email`: `not-an-email-1007` is not an email address (no `@`); fix it "
        "in the model or at the source",
    }
    assert project_factory.emulator.people() == []

    report = json.loads(invoke(project, "sync", "profile", "--json"))[0]
    assert report["status"] == "success" and report["delivered"] == GOOD
    assert report["changes"]["rejected"] == BAD_EMAILS + NULL_KEYS
    # 1,150 rows are two problems, not 1,150: grouped by the kind of reason, the values masked
    assert [(g["kind"], g["rows"]) for g in report["rejected_reasons"]] == [
        (
            "column `email`: `…` is not an email address (no `@`); fix it in the model or at "
            "the source",
            BAD_EMAILS,
        ),
        ("primary key is null", NULL_KEYS),
    ]
    example = report["rejected_reasons"][0]
    assert (
        example["example"]
        == f"column `email`: `not-an-email-{example['key']}` is not an email address (no `@`); "
        "fix it in the model or at the source"
    )
    assert len(project_factory.emulator.people()) == GOOD

    # the run keeps its first rows by key; `runs show` lists them and writes them out
    shown = json.loads(
        invoke(project, "runs", "show", report["run_id"], "--json", "--limit", "5000")
    )
    assert shown["run_id"] == report["run_id"] and shown["status"] == "success"
    assert shown["rejected_recorded"] == rejects.KEPT_PER_RUN
    assert {r["stage"] for r in shown["rejected"]} == {"mapping"}  # as the run log says
    keys = [r["key"] for r in shown["rejected"]]
    assert keys == sorted(r["key"] for r in planned)[: rejects.KEPT_PER_RUN]
    invoke(project, "runs", "show", "--export-rejected", str(tmp_path / "run.csv"))  # the latest
    assert [r["key"] for r in read_csv(tmp_path / "run.csv")] == keys
    text = invoke(project, "runs", "show", report["run_id"][-6:])  # the id's last part names it
    assert "1,100" in text and "not an email address" in text
    assert f"the first 50 of {rejects.KEPT_PER_RUN:,}" in " ".join(text.split())
    # the list of runs counts the rows the mapping rejected, not only Customer.io's
    listed = " ".join(invoke(project, "runs").split())
    assert "│ 1,150 │" in listed

    # rejected rows are tried again on every run: once fixed, they are sent
    users(project_factory, fixed=True)
    again = json.loads(invoke(project, "sync", "profile", "--json"))[0]
    assert again["changes"]["rejected"] == NULL_KEYS and again["delivered"] == BAD_EMAILS
    assert len(project_factory.emulator.people()) == GOOD + BAD_EMAILS
    shown = json.loads(invoke(project, "runs", "show", "--sync", "profile", "--json"))
    assert shown["run_id"] == again["run_id"] and shown["rejected_recorded"] == NULL_KEYS


def test_a_run_a_guardrail_stops_still_shows_the_rows_it_rejected(
    project_factory: ProjectFactory,
) -> None:
    users(project_factory)
    project = project_factory.write({"profile": PROFILE + "guardrails: {max_rejected: 10}\n"})
    with pytest.raises(LockgateError, match="max_rejected"):
        invoke(project, "sync", "profile")
    assert project_factory.emulator.people() == []

    shown = json.loads(invoke(project, "runs", "show", "--json"))
    assert shown["status"] == "failed" and "max_rejected" in shown["error"]
    assert shown["rejected_recorded"] == rejects.KEPT_PER_RUN
    text = " ".join(invoke(project, "runs", "show").split())
    assert "failed" in text and "1,150 rows rejected, by reason" in text


def test_runs_show_names_what_it_cannot_find(project_factory: ProjectFactory) -> None:
    users(project_factory, fixed=True)
    project = project_factory.write({"profile": PROFILE})
    with pytest.raises(LockgateError, match="no run yet"):
        invoke(project, "runs", "show")
    invoke(project, "sync", "profile")
    invoke(project, "sync", "profile")
    with pytest.raises(LockgateError, match="no run has the id `nope`") as missing:
        invoke(project, "runs", "show", "nope")
    assert "lockgate runs" in (missing.value.hint or "")
    # both runs' ids start with the year: name one of them
    with pytest.raises(LockgateError, match="more than one run matches `20`"):
        invoke(project, "runs", "show", "20")


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        (
            "column `email`: `bob@` is not an email address",
            "column `email`: `…` is not an email address",
        ),
        ("key `42` appears 2 times in the model", "key `…` appears N times in the model"),
        (
            "column `first_name` (field `first_name`): value is 1200 bytes, over the "
            "1000-byte limit of Customer.io",
            "column `first_name` (field `first_name`): value is N bytes, over the N-byte limit "
            "of Customer.io",
        ),
        (
            "column `score_2` (field `score`): value `abc` is not a number",
            "column `score_2` (field `score`): value `…` is not a number",
        ),
        (
            "column `occurred_at`: timestamp 2026-12-05 08:58:06 UTC is in the future (now "
            "2026-12-03 08:58:07 UTC; up to 5 minutes ahead is taken for clock skew)",
            "column `occurred_at`: timestamp N N UTC is in the future (now N N UTC; up to N "
            "minutes ahead is taken for clock skew)",
        ),
        (
            "no identifier: the identity graph gives this row no Customer.io id or email "
            "(`user_id` is null, or on a profile without one)",
            "no identifier: the identity graph gives this row no Customer.io id or email "
            "(`user_id` is null, or on a profile without one)",
        ),
        ("event name `signed_up` is over 150 bytes", "event name `…` is over N bytes"),
    ],
)
def test_a_reason_s_kind_masks_its_values_and_keeps_its_names(reason: str, kind: str) -> None:
    assert rejects.shape(reason) == kind


def test_reasons_past_the_groups_kept_are_counted_as_other_reasons() -> None:
    counted = [(f"column `c{i}`: id is over 150 bytes", 30 - i, f"k{i}") for i in range(25)]
    total = sum(n for _, n, _ in counted) + 7  # reasons past the ones counted one by one
    found = rejects.group(counted, total)
    assert len(found) == rejects.GROUPS_KEPT + 1
    assert found[0] == rejects.ReasonGroup(
        "column `c0`: id is over N bytes", 30, "column `c0`: id is over 150 bytes", "k0"
    )
    assert found[0].text == "column `c0`: id is over 150 bytes"  # one text: shown whole
    assert found[-1].kind == "other reasons"
    assert found[-1].rows == sum(30 - i for i in range(rejects.GROUPS_KEPT, 25)) + 7
    assert sum(g.rows for g in found) == total


HUGE = 5000  # characters of each bad value below; `é` is two bytes, so 10,000 bytes

TYPED = """
name: typed
source: warehouse
model: {table: typed}
kind: people
primary_key: pk
identify_by: {id: user_id, email: email}
attributes:
  signed_up: {column: signed_up, type: timestamp}
  score: {column: score, type: number}
  seats: {column: seats, type: integer}
  active: {column: active, type: boolean}
  meta: {column: meta, type: json}
"""

ACTIVITY = """
name: activity
source: warehouse
model: {table: activity}
kind: events
identify_by: {id: user_id}
event: {name: event_name, timestamp: occurred_at, id: event_id}
"""


def test_a_huge_bad_value_gives_a_reason_of_a_line_naming_the_column_and_its_length(
    project_factory: ProjectFactory, tmp_path: Path
) -> None:
    """A 5,000-character bad value was quoted whole in its reason (5,050 characters in the
    report, `runs show` and the run log); now its first 80 characters and its length."""
    huge = "'2026-01-01 ' || repeat('é', " + str(HUGE - 11) + ")"  # HUGE characters
    good = "'2026-01-01', '1.5', '2', 'true', '{}'"
    project_factory.sql(
        f"""
        create or replace table typed as
        select * from (values
            ('u1', 'u1@example.com', {good}),
            ('u2', 'u2@example.com', {good}),
            ('b1', 'b1@example.com', {huge}, '1.5', '2', 'true', '{{}}'),
            ('b2', 'b2@example.com', '2026-01-01', {huge}, '2', 'true', '{{}}'),
            ('b3', 'b3@example.com', '2026-01-01', '1.5', {huge}, 'true', '{{}}'),
            ('b4', 'b4@example.com', '2026-01-01', '1.5', '2', {huge}, '{{}}'),
            ('b5', 'b5@example.com', '2026-01-01', '1.5', '2', 'true', {huge}),
            (null, {huge}, '2026-01-01', '1.5', '2', 'true', '{{}}')
        ) t(user_id, email, signed_up, score, seats, active, meta);
        -- the key: the id, and `b6` for the row without one
        alter table typed add column pk varchar;
        update typed set pk = coalesce(user_id, 'b6');
        create or replace table activity as
        select * from (values
            ('e1', 'u1', 'signed_up', (now() - interval 1 hour)::varchar),  -- not a backfill
            ('e2', 'u1', 'signed_up', {huge}),
            ('e3', 'u1', repeat('x', {HUGE}), '2026-01-01')
        ) t(event_id, user_id, event_name, occurred_at)
        """
    )
    project = project_factory.write({"typed": TYPED, "activity": ACTIVITY})
    invoke(project, "plan", "typed", "--export-rejected", str(tmp_path / "typed.csv"))
    invoke(project, "plan", "activity", "--export-rejected", str(tmp_path / "activity.csv"))
    reasons = {
        r["key"]: r["reason"]
        for name in ("typed", "activity")
        for r in read_csv(tmp_path / f"{name}.csv")
    }
    head = "2026-01-01 " + "é" * 69  # the first 80 characters, none cut in two
    shown = f"`{head}… ({HUGE} characters)`"
    assert reasons == {
        "b1": f"column `signed_up` (field `signed_up`): value {shown} is not a timestamp "
        "(use ISO 8601, e.g. 2026-01-31T12:00:00Z)",
        "b2": f"column `score` (field `score`): value {shown} is not a number",
        "b3": f"column `seats` (field `seats`): value {shown} is not an integer",
        "b4": f"column `active` (field `active`): value {shown} is not a boolean (true/false/1/0)",
        "b5": f"column `meta` (field `meta`): value {shown} is not valid JSON",
        # a null id: the row is addressed by its email, which is not one
        "b6": f"column `email`: {shown} is not an email address ({HUGE} characters, over the 254 "
        "an address can have); fix it in the model or at the source",
        "e2": f"column `occurred_at` (field `timestamp`): value {shown} is not a timestamp "
        "(use ISO 8601, e.g. 2026-01-31T12:00:00Z)",
        "e3": f"event name `{'x' * 80}… ({HUGE} characters)` is {HUGE} bytes, over the "
        "100-byte limit of Customer.io (UTF-8)",
    }
    # the good rows still go, and the report groups the reasons as it does short ones
    report = json.loads(invoke(project, "sync", "typed", "activity", "--json"))
    assert [r["delivered"] for r in report] == [2, 1]
    assert sorted(p.id or "" for p in project_factory.emulator.people()) == ["u1", "u2"]
    assert [e.name for e in project_factory.emulator.events()] == ["signed_up"]
    assert ("column `score` (field `score`): value `…` is not a number", 1) in [
        (g["kind"], g["rows"]) for g in report[0]["rejected_reasons"]
    ]
