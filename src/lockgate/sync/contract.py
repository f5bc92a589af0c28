"""Project-wide data-contract checks run by `lockgate validate`, before any run.

- **Ownership**: two people syncs writing the same Customer.io attribute to the same
  destination (or two objects syncs to the same object type) overwrite each other. An error
  naming both syncs, their files and the attribute, unless every sync writing it lists it in
  `guardrails.shared_attributes` (then a warning). The `email` attribute a sync sends
  implicitly because it identifies by email is not counted.
- **Attribute budget**: people syncs of one destination that together set more than the 300
  attributes Customer.io states a person holds. A warning (enforcement across calls is not
  documented); each identify's own 300 is checked when the sync file loads.
- **Event-name drift**: names that differ only in case, punctuation, separators or word order
  (`Checkout Abandoned`, `abandoned_checkout`, `checkoutAbandoned`) split one behaviour into
  several events in Customer.io. Names come from the sync files (constant `event.name`
  values, `on_change` events) and from the state: every name an events sync has sent.
  An error, unless one of the names is listed in `guardrails.distinct_event_names` (warning).
- **Acknowledged types**: an entry of `guardrails.accept_type_changes` naming a column the
  sync does not read acknowledges nothing (a warning).
- **Unused default**: a field's `default` is sent only under `on_null: default`; one whose
  null policy is `skip` or `clear` is never sent (a warning).
- **Identifier changed**: `identify_by` or `primary_key` (or an events sync's `event.id`, which
  its delivered events are keyed by) differ from the sync's last committed run (read from the
  state when there is one). An error: the run would be refused until forced once (`lockgate
  sync NAME --force`), which records the new identifiers.
- **Workspace**: the state of a sync is of another Customer.io workspace than its destination
  points at now (a project copied with its `.lockgate`, a `state:` folder shared by two
  projects). A warning: runs and plans of the sync are refused until it has a state of its own
  or is started over (`lockgate sync NAME --new-workspace`).

Example::

    findings = check_project(load_project("."))
    errors = [f for f in findings if f.level == "error"]
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from lockgate.console import Console
from lockgate.errors import ConfigError, StateError
from lockgate.project.loader import Project
from lockgate.project.models import MAX_ATTRIBUTES
from lockgate.state import contract, workspace
from lockgate.state.store import StateStore
from lockgate.sync.mapping import (
    CUSTOMERIO_IDENTIFIERS,
    event_key,
    event_key_text,
    same_identifiers,
)


@dataclass(frozen=True)
class Finding:
    """One problem found by a contract check."""

    check: str
    level: str  # error | warning
    message: str
    files: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "level": self.level,
            "message": self.message,
            "files": list(self.files),
        }


def _writers(project: Project) -> list[tuple[str, str, list[str], bool]]:
    """Each attribute more than one people sync of a destination (or objects sync of one
    object type) writes: (what they write to: ``destination `customerio```, ``objects of
    type `1` of destination `customerio```; the attribute; the syncs; whether every one of
    them acknowledges it in `shared_attributes`, or `defaults.guardrails` does)."""
    writers: dict[tuple[str, str], list[str]] = defaultdict(list)
    for sync in project:
        if sync.kind == "people":
            where = f"destination `{sync.destination}`"
        elif sync.kind == "objects":
            where = f"objects of type `{sync.object_type_id}` of destination `{sync.destination}`"
        else:
            continue
        for attribute in sync.attributes:
            writers[(where, attribute)].append(sync.name)
    shared_default = set(project.config.defaults.guardrails.shared_attributes)
    out = []
    for (destination, attribute), names in sorted(writers.items()):
        if len(names) < 2:
            continue
        acknowledged = attribute in shared_default or all(
            attribute in project.syncs[n].guardrails.shared_attributes for n in names
        )
        out.append((destination, attribute, names, acknowledged))
    return out


def _ownership_fix(attributes: list[str]) -> str:
    listed = ", ".join(attributes)
    return (
        "give each attribute one owner (take it out of the other syncs' `attributes:`), or, if "
        f"they are meant to write it together, list it in every one of them: `guardrails: "
        f"{{shared_attributes: [{listed}]}}` (or once under `defaults.guardrails` in "
        "lockgate.yml)"
    )


def ownership(project: Project) -> list[Finding]:
    """Attributes written by more than one people sync of the same destination, or objects
    sync of the same object type."""
    # one finding per set of syncs and verdict, listing every attribute they share
    groups: dict[tuple[str, tuple[str, ...], bool], list[str]] = defaultdict(list)
    for destination, attribute, names, acknowledged in _writers(project):
        groups[(destination, tuple(names), acknowledged)].append(attribute)
    out: list[Finding] = []
    for (destination, syncs, acknowledged), attributes in groups.items():
        files = tuple(project.sync_files[n] for n in syncs)
        where = " and ".join(f"sync `{n}` ({project.sync_files[n]})" for n in syncs)
        listed = ", ".join(f"`{a}`" for a in attributes)
        what = (
            f"attribute {listed} of {destination} is"
            if len(attributes) == 1
            else f"attributes {listed} of {destination} are"
        )
        if acknowledged:
            message = f"{what} written by {where} (acknowledged in `shared_attributes`)"
        else:
            message = (
                f"{what} written by {where}: each run overwrites the other's value, and "
                f"`lockgate sync` and `plan` warn of it. To fix it, "
                f"{_ownership_fix(attributes)}"
            )
        out.append(Finding("ownership", "warning" if acknowledged else "error", message, files))
    return out


def ownership_warnings(project: Project, names: Sequence[str]) -> list[str]:
    """What `lockgate sync` and `plan` warn of, once per command: each attribute that the
    people syncs run (``names``), with another people sync of their destination, write
    without every one of them acknowledging it in `shared_attributes`. `lockgate validate`
    reports the same as an error."""
    out = []
    for destination, attribute, writers, acknowledged in _writers(project):
        if acknowledged or not set(writers) & set(names):
            continue
        syncs = " and ".join(f"sync `{n}` ({project.sync_files.get(n, n)})" for n in writers)
        out.append(
            f"attribute `{attribute}` of {destination} is written by {syncs}: "
            "each run overwrites the other's value, so every "
            f"{'object' if destination.startswith('objects') else 'person'} both reach holds "
            f"whichever ran last (`lockgate validate` reports it as an error). To fix it, "
            f"{_ownership_fix([attribute])}"
        )
    return out


def _deleted_by_other_identifiers(project: Project) -> list[tuple[str, str]]:
    """(deleting sync, other sync): a people sync that deletes (`mirror`, `delete_removed`)
    and sends the email as an attribute, not among its identifiers, and another people sync
    of its destination that identifies people by email and by none of the deleting sync's
    identifiers. Customer.io deletes the whole person, email and all, but the other sync
    forgets a deleted person only when it shares one of the identifiers the delete named
    (``diff.people_of``): by email it cannot, and it would keep the person as delivered,
    never sending them again. One that also sends people by the same `id` tells them."""
    found = []
    for sync in project:
        if sync.kind != "people" or not sync.delete_removed or sync.effective_mode != "mirror":
            continue
        names = {CUSTOMERIO_IDENTIFIERS.get(k, k) for k in sync.identify_by}
        if "email" in names or "email" not in sync.attributes:
            continue
        for other in project:
            if (
                other.kind == "people"
                and other.name != sync.name
                and other.destination == sync.destination
                and "email" in other.identify_by
                and not names & {CUSTOMERIO_IDENTIFIERS.get(k, k) for k in other.identify_by}
            ):
                found.append((sync.name, other.name))
    return found


def _deleted_by_other_identifiers_message(project: Project, deleting: str, other: str) -> str:
    identifiers = ", ".join(f"`{k}`" for k in project.syncs[deleting].identify_by)
    return (
        f"people sync `{deleting}` ({project.sync_files.get(deleting, deleting)}) deletes "
        f"people by {identifiers} and sends their email as the attribute `email`, and people "
        f"sync `{other}` ({project.sync_files.get(other, other)}) sends people by email: "
        f"Customer.io deletes the whole person, email and all, but `{other}` cannot tell that "
        f"person among its own (they share no identifier `{deleting}` identifies by), so it "
        "keeps them as delivered and never sends them again. To fix it, move the email into "
        f"`{deleting}`'s `identify_by` (`email: <its column>`, instead of the `email` "
        f"attribute): its deletes then name the email, and `{other}` sends the person again"
    )


def deleted_by_other_identifiers(project: Project) -> list[Finding]:
    """`lockgate validate`'s warning of :func:`_deleted_by_other_identifiers`."""
    return [
        Finding(
            "deletes",
            "warning",
            _deleted_by_other_identifiers_message(project, deleting, other),
            (project.sync_files[deleting], project.sync_files[other]),
        )
        for deleting, other in _deleted_by_other_identifiers(project)
    ]


def run_warnings(project: Project, names: Sequence[str]) -> list[str]:
    """What a command that runs or plans the syncs ``names`` (`lockgate sync`, `plan`,
    `schedule`) warns of before it runs them, once: the attribute budgets they take part in
    and the attributes they write with another people sync unacknowledged
    (:func:`ownership_warnings`). `lockgate validate` reports the same."""
    budgets = [b.message() for b in attribute_budgets(project) if set(b.syncs) & set(names)]
    deletes = [
        _deleted_by_other_identifiers_message(project, deleting, other)
        for deleting, other in _deleted_by_other_identifiers(project)
        if deleting in names
    ]
    return budgets + ownership_warnings(project, names) + deletes


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
#: what separates words: anything but a letter or digit of any script (`_` included), so
#: `注文完了` or `Ödeme` are words, not separators
_NON_WORD = re.compile(r"[\W_]+")


def event_name_key(name: str) -> str:
    """A name with case, punctuation, separators and word order normalised away:
    `Checkout Abandoned`, `abandoned_checkout` and `checkoutAbandoned` share one key. A name
    with no letter or digit at all (`🎉`) is its own key: only itself is its spelling. Unicode
    forms are normalised (NFKC): a composed `Ö` and an `O` with a combining diaeresis are one
    spelling to a reader, two names to Customer.io."""
    text = unicodedata.normalize("NFKC", name.strip())
    words = _NON_WORD.split(_CAMEL.sub(" ", text).casefold())
    return " ".join(sorted(w for w in words if w)) or name.strip()


def event_names(project: Project, sent: dict[str, list[str]]) -> list[Finding]:
    """Pairs of distinct event names that collide once normalised."""
    origins: dict[str, set[str]] = defaultdict(set)
    for sync in project:
        file = project.sync_files[sync.name]
        if sync.event is not None and sync.event.name.value:
            origins[sync.event.name.value.strip()].add(f"{file}")
        for change in getattr(sync, "on_change", None) or []:
            origins[str(change.event).strip()].add(f"{file} (on_change)")
    for sync_name, names in sent.items():
        for name in names:
            origins[name].add(f"sent by sync `{sync_name}`")
    distinct = set(project.config.defaults.guardrails.distinct_event_names)
    for sync in project:
        distinct.update(sync.guardrails.distinct_event_names)
    groups: dict[str, list[str]] = defaultdict(list)
    for name in origins:
        if name:
            groups[event_name_key(name)].append(name)
    out: list[Finding] = []
    for _key, names in sorted(groups.items()):
        if len(names) < 2:
            continue
        names.sort()
        shown = " vs ".join(f"`{n}` ({', '.join(sorted(origins[n]))})" for n in names)
        files = tuple(sorted({o for n in names for o in origins[n] if o.endswith(".yml")}))
        if distinct & set(names):
            out.append(
                Finding(
                    "event-name drift",
                    "warning",
                    f"event names {shown} differ only in case, punctuation or word order "
                    "(acknowledged in `distinct_event_names`)",
                    files,
                )
            )
        else:
            out.append(
                Finding(
                    "event-name drift",
                    "error",
                    f"event names {shown} differ only in case, punctuation or word order: "
                    "Customer.io treats them as different events, so campaigns and segments "
                    "see only some of them. Use one spelling, or list the name under "
                    "`guardrails: {distinct_event_names: [...]}` if they really differ",
                    files,
                )
            )
    return out


def identifiers(project: Project, last: dict[str, contract.Contract]) -> list[Finding]:
    """Syncs whose `identify_by`, `primary_key` or (events) `event.id` changed since their last
    committed run."""
    out: list[Finding] = []
    for sync in project:
        was = last.get(sync.name)
        if was is None:
            continue
        parts = []
        if not same_identifiers(was.identify_by, dict(sync.identify_by)):
            parts.append(
                f"`identify_by` was {orjson.dumps(was.identify_by).decode()}, "
                f"now {orjson.dumps(dict(sync.identify_by)).decode()}"
            )
        if sync.key_columns != was.key_columns:
            parts.append(
                f"`primary_key` was {orjson.dumps(was.key_columns).decode()}, "
                f"now {orjson.dumps(sync.key_columns).decode()}"
            )
        key, was_key = event_key(sync), (was.mapping or {}).get("event_key")
        if key is not None and was_key is not None and key != was_key:
            parts.append(f"`event.id` was `{event_key_text(was_key)}`, now `{event_key_text(key)}`")
        if parts:
            file = project.sync_files[sync.name]
            out.append(
                Finding(
                    "identifier changed",
                    "error",
                    f"sync `{sync.name}` ({file}): {'; '.join(parts)} since its last run "
                    f"({was.run_id}); the next run is refused until `lockgate sync "
                    f"{sync.name} --force` accepts the change once"
                    + (
                        " (with a new `event.id`, every delivered event still in the model "
                        "would be sent again as a new one)"
                        if key != was_key and was_key is not None
                        else ""
                    ),
                    (file,),
                )
            )
    return out


@dataclass(frozen=True)
class Budget:
    """The syncs that write attributes onto the same people (or objects of one type) of one
    destination, and how many distinct attribute names they write together."""

    what: str  # "people" or "objects of type `1`"
    destination: str
    syncs: tuple[str, ...]
    names: int
    graph: tuple[str, ...] = ()  # the identity graph's attributes among them

    def message(self) -> str:
        which = ", ".join(f"`{n}`" for n in self.syncs)
        people = self.what == "people"
        plural = "s" if len(self.syncs) > 1 else ""
        syncs = (
            f"the people sync{plural} {which}"
            if people
            else (f"the objects sync{plural} {which} ({self.what})")
        )
        graph = (
            f" (with the {len(self.graph)} the identity graph adds: "
            f"{', '.join(f'`{n}`' for n in self.graph)})"
            if self.graph
            else ""
        )
        return (
            f"{syncs} of destination `{self.destination}` {'write' if plural else 'writes'} "
            f"{self.names} distinct "
            f"attributes together{graph}; Customer.io keeps at most {MAX_ATTRIBUTES} on "
            f"{'a person' if people else 'an object'}: past that, a new attribute is not stored "
            "and Customer.io only logs an attribute update failure (the call answers 200, so "
            "Lockgate never sees it). Drop attributes no campaign or segment reads, or gather "
            "related ones into one JSON attribute (`type: json`)"
        )


def attribute_budgets(project: Project) -> list[Budget]:
    """Each group of syncs that together write more distinct attribute names than Customer.io
    keeps on one person or object (300): the people syncs of a destination (the `email` an
    email-identified sync sends, and the attributes an identity graph adds to every person,
    counted), and the objects syncs of an object type. Each identify is checked on its own
    (at most 300 per call, an error when a sync file loads); several calls adding up to more
    are not refused, only logged by Customer.io, so this is what catches it. Names only: how
    many a given person holds depends on the data."""
    graph: set[str] = set()
    if project.config.identity is not None:
        from lockgate.identity.customerio import attribute_names
        from lockgate.sync.mapping import needs_identity

        graph = set(attribute_names(project.config.identity))
    names: dict[tuple[str, str], set[str]] = defaultdict(set)
    syncs: dict[tuple[str, str], list[str]] = defaultdict(list)
    added: dict[tuple[str, str], set[str]] = defaultdict(set)
    for sync in project:
        if sync.kind == "people":
            group = ("people", sync.destination)
            names[group].update(sync.identify_attributes)
            if graph and needs_identity(project, sync):
                added[group].update(graph - set(sync.attributes))
        elif sync.kind == "objects":
            group = (f"objects of type `{sync.object_type_id}`", sync.destination)
            names[group].update(sync.attributes)
        else:
            continue
        syncs[group].append(sync.name)
    out: list[Budget] = []
    for group in sorted(names):
        graph_only = added[group] - names[group]
        total = len(names[group]) + len(graph_only)
        if total <= MAX_ATTRIBUTES:
            continue
        what, destination = group
        out.append(Budget(what, destination, tuple(syncs[group]), total, tuple(sorted(graph_only))))
    return out


def attribute_budget(project: Project) -> list[Finding]:
    """:func:`attribute_budgets` as warnings naming the syncs' files."""
    return [
        Finding(
            "attribute budget",
            "warning",
            budget.message(),
            tuple(project.sync_files[n] for n in budget.syncs),
        )
        for budget in attribute_budgets(project)
    ]


def unused_defaults(project: Project) -> list[Finding]:
    """Fields with a `default` whose null policy is not `default` (their own `on_null`, else
    the sync's, else `defaults.on_null`): the default is never sent, and a null is skipped (or
    cleared) as if it were not written. A warning: a sync may keep defaults ready for a policy
    it sets later."""
    out: list[Finding] = []
    for sync in project:
        groups = [
            ("attribute", sync.attributes),
            ("relationship attribute", sync.relationship_attributes),
            ("property", sync.properties),
            *(("property", rule.properties) for rule in sync.on_change),
        ]
        for what, fields in groups:
            for name, spec in fields.items():
                policy = spec.on_null or sync.on_null
                if spec.default is None or spec.value is not None or policy == "default":
                    continue
                whose = "its own" if spec.on_null else "the sync's"
                shown = orjson.dumps(spec.default).decode()
                out.append(
                    Finding(
                        "unused default",
                        "warning",
                        f"sync `{sync.name}`: {what} `{name}` has `default: {shown}`, which is "
                        f"never sent: its null policy is `{policy}` ({whose}), so a null is "
                        + ("cleared" if policy == "clear" else "not sent")
                        + f". To send the default for a null, set `on_null: default` on "
                        f"`{name}`; otherwise remove `default`",
                        (project.sync_files.get(sync.name, ""),),
                    )
                )
    return out


def acknowledged_types(project: Project) -> list[Finding]:
    """`guardrails.accept_type_changes` entries naming a column the sync does not read: type
    drift is checked only on the columns a sync reads, so such an entry acknowledges nothing
    (a misspelt column, or one the mapping no longer reads). A warning."""

    from lockgate.sync.guard import columns_read

    out: list[Finding] = []
    from lockgate.scratch import scratch

    with scratch() as con:  # parses `on_change` `unless` conditions only
        for sync in project:
            listed = sync.guardrails.accept_type_changes
            if not listed:
                continue
            read = set(columns_read(sync, con))
            for column in listed:
                if column in read:
                    continue
                out.append(
                    Finding(
                        "accepted type",
                        "warning",
                        f"sync `{sync.name}` acknowledges a type change of `{column}` "
                        "(`guardrails.accept_type_changes`), a column it does not read: type "
                        "drift is checked only on the columns a sync reads, so this acknowledges "
                        "nothing. Check the column's name, or remove the entry",
                        (project.sync_files.get(sync.name, ""),),
                    )
                )
    return out


def check_project(project: Project) -> list[Finding]:
    """Every contract check; the state is read when it exists and no sync is writing it. It
    is opened to read only: nothing is created or written, so a state on a read-only disk is
    checked as well, and other readers (`lockgate runs`) do not stop it."""
    findings = ownership(project) + attribute_budget(project) + acknowledged_types(project)
    findings += unused_defaults(project)
    findings += deleted_by_other_identifiers(project)
    sent: dict[str, list[str]] = {}
    last: dict[str, contract.Contract] = {}
    try:
        state_dir: Path | None = project.state_dir
    except ConfigError:  # `state: ${VAR}` with the variable not set: validate warns of it
        state_dir = None
    if state_dir is not None and (state_dir / "state.duckdb").exists():
        try:
            with StateStore.open_read_only(state_dir) as store:
                sent = {k: v for k, v in contract.event_names(store.con).items()}
                for sync in project:
                    found = contract.last(store.con, sync.name)
                    if found is not None:
                        last[sync.name] = found
                findings += other_workspace(store, project)
                findings += left_the_project(store, project)
        except StateError as exc:
            findings.append(
                Finding(
                    "state",
                    "warning",
                    f"{exc.reason}: event names already sent and identifier changes were not "
                    "checked",
                )
            )
    findings += event_names(project, {k: v for k, v in sent.items() if k in project.syncs})
    findings += identifiers(project, last)
    findings += untimed_first_runs(project, last)
    return findings


def untimed_first_runs(project: Project, last: dict[str, contract.Contract]) -> list[Finding]:
    """Events syncs without `event.timestamp` whose first run is still to come (none committed,
    or none since `--new-workspace` started them over) and that do not
    say what it does with the events already in the model (`backfill.first_run`): that run
    stops before sending anything (the guardrail in ``guard``), said here before it does."""
    out: list[Finding] = []
    for sync in project:
        if (
            sync.event is None
            or sync.event.timestamp
            or (sync.name in last and not last[sync.name].started_over)
            or sync.backfill.untimed_first_run is not None
        ):
            continue
        out.append(
            Finding(
                "untimed first run",
                "warning",
                f"sync `{sync.name}` has no `event.timestamp`, so its first run cannot tell the "
                "events already in the model from new ones and will stop before sending "
                "anything: map `event.timestamp`, or set `backfill: {first_run: skip}` (record "
                "them as history, send only later ones) or `{first_run: send}` (send them all "
                "as happening now)",
                tuple(f for f in [project.sync_files.get(sync.name)] if f),
            )
        )
    return out


def left_the_project(store: StateStore, project: Project) -> list[Finding]:
    """The syncs the state holds a committed state of that the project no longer has: renamed
    in their files (the new name's first run is stopped by the guardrail `sync renamed?`
    until `lockgate state rename` carries the state over) or removed (`lockgate state
    forget`)."""
    from lockgate.state import names

    gone = [n for n in names.committed(store) if n not in project.syncs]
    if not gone:
        return []
    listed = ", ".join(f"`{n}`" for n in sorted(gone))
    return [
        Finding(
            "sync not in the project",
            "warning",
            f"the state holds sync{'s' if len(gone) > 1 else ''} {listed}, which the project no "
            "longer has: renamed, carry its state over with `lockgate state rename OLD NEW` "
            "(else the new name's first run sends everything again, and is stopped by the "
            "guardrail `sync renamed?`); removed for good, `lockgate state forget NAME`",
        )
    ]


def other_workspace(store: StateStore, project: Project) -> list[Finding]:
    """The syncs whose state is of another Customer.io workspace than they point at now: their
    runs and plans are refused (:mod:`lockgate.state.workspace`)."""
    names = [s.name for s in project if workspace.moved(store, project, s)]
    if not names:
        return []
    listed = ", ".join(f"`{n}`" for n in names)
    return [
        Finding(
            "workspace",
            "warning",
            f"sync{'s' if len(names) > 1 else ''} {listed}: the state `{store.path}` is of "
            "another Customer.io workspace (another site id) than the destination points at "
            "now, so `lockgate sync` and `plan` refuse "
            f"{'them' if len(names) > 1 else 'it'}: {workspace.FIX.format(syncs=' '.join(names))}",
            tuple(project.sync_files[n] for n in names),
        )
    ]


def render(console: Console, findings: list[Finding]) -> None:
    """The findings as one table (nothing when there are none)."""
    if findings:
        console.table(
            "data contract",
            ["level", "check", "problem"],
            [(f.level.upper(), f.check, f.message) for f in findings],
        )
