"""When the syncs of a project with a `schedule:` are due (`lockgate schedule`).

A sync's `schedule` is a cron expression read in UTC: five fields (`*/15 * * * *`), or six
with seconds last (`* * * * * */30`). :class:`Timetable` keeps each scheduled sync's next due
time; the syncs due at one moment run together, in the order `sync --all` runs them (objects
before the relationships that need them). A run that takes longer than its interval does not
pile up: the slots that passed while it ran are skipped, and counted, and the sync is next due
at its first slot after now. The timetable knows nothing of how a sync runs; the command drives
it (``lockgate.cli.schedule``).

Example::

    table = Timetable.of(project, now)
    due = table.due(now)                # [] until the first slot
    missed = table.ran(due, finished)   # {name: slots skipped while they ran}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from croniter import croniter

from lockgate.project.loader import Project
from lockgate.sync.run import KIND_ORDER


def next_after(expression: str, moment: datetime) -> datetime:
    """The first slot of ``expression`` strictly after ``moment`` (aware, UTC)."""
    found: datetime = croniter(expression, moment).get_next(datetime)
    return found


@dataclass
class Entry:
    """One scheduled sync."""

    name: str
    expression: str
    kind_order: int
    next_at: datetime


@dataclass
class Timetable:
    """The next due time of each scheduled sync of a project."""

    entries: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def of(cls, project: Project, now: datetime, before: Timetable | None = None) -> Timetable:
        """The project's scheduled syncs, each next due after ``now``; with ``before`` (the
        timetable of the project as it was), a sync whose schedule is unchanged keeps its
        next due time, so reloading the project between runs moves nothing."""
        entries: dict[str, Entry] = {}
        for sync in project:
            if sync.schedule is None:
                continue
            kept = before.entries.get(sync.name) if before is not None else None
            if kept is not None and kept.expression == sync.schedule:
                entries[sync.name] = kept
                continue
            entries[sync.name] = Entry(
                sync.name, sync.schedule, KIND_ORDER[sync.kind], next_after(sync.schedule, now)
            )
        return cls(entries)

    def next_at(self) -> datetime | None:
        """When the next sync is due; None when nothing is scheduled."""
        return min((e.next_at for e in self.entries.values()), default=None)

    def due(self, now: datetime) -> list[str]:
        """The syncs due at ``now``, in the order `sync --all` runs them."""
        due = [e for e in self.entries.values() if e.next_at <= now]
        return [e.name for e in sorted(due, key=lambda e: (e.kind_order, e.name))]

    def ran(self, names: list[str], finished: datetime) -> dict[str, int]:
        """Move the syncs that ran to their first slot after ``finished``; returns how many
        slots each skipped while it ran (or waited for the ones before it)."""
        missed: dict[str, int] = {}
        for name in names:
            entry = self.entries.get(name)
            if entry is None:
                continue
            skipped = 0
            slot = next_after(entry.expression, entry.next_at)
            while slot <= finished:
                skipped += 1
                slot = next_after(entry.expression, slot)
            entry.next_at = slot
            missed[name] = skipped
        return missed
