"""Commit: advance the snapshot and ledger only for what the destination accepted.

Results arrive per HTTP batch. Delivered people go to the journal (folded into the
snapshot at the end of the run, or at the start of the next one after a crash);
delivered events go straight to the ledger. Every result, whatever its outcome, goes to
the per-record history. Rejected and dead-lettered records are not committed, so the
next run tries them again. Buffers are flushed at least every ``flush_seconds``, which
bounds what a crash can make a re-run send again (identify is idempotent; events carry
their dedupe id).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lockgate.destinations.base import Outcome, Result
from lockgate.state.store import StateStore


@dataclass(frozen=True, slots=True)
class Pending:
    """What the committer needs to know about a record in flight."""

    h: int | None
    ident: str | None
    removed: bool
    action: str


@dataclass
class CommitCounts:
    delivered: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (key, outcome, reason)


class Committer:
    """Buffers results and writes them to the state store."""

    def __init__(
        self, store: StateStore, *, sync: str, run_id: str, kind: str, flush_seconds: float = 0.25
    ) -> None:
        self.store = store
        self.sync = sync
        self.run_id = run_id
        self.kind = kind
        self.flush_seconds = flush_seconds
        self.counts = CommitCounts()
        self._last_flush = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self._journal: tuple[list[str], list[int | None], list[str | None], list[bool]] = (
            [], [], [], []
        )
        self._ledger: list[str] = []
        self._history: dict[str, list[Any]] = {
            name: [] for name in
            ("run_id", "sync", "k", "ident", "action", "outcome", "status", "reason", "sent_at")
        }
        self._rejected: list[tuple[str, str]] = []

    def add(self, results: list[Result], pending: dict[str, Pending]) -> None:
        now = datetime.now(UTC)
        hist = self._history
        for result in results:
            meta = pending.pop(result.key)
            hist["run_id"].append(self.run_id)
            hist["sync"].append(self.sync)
            hist["k"].append(result.key)
            hist["ident"].append(meta.ident)
            hist["action"].append(meta.action)
            hist["outcome"].append(result.outcome.value)
            hist["status"].append(result.status)
            hist["reason"].append(result.reason)
            hist["sent_at"].append(now)
            if result.outcome is Outcome.DELIVERED:
                self.counts.delivered += 1
                if self.kind == "events":
                    self._ledger.append(result.key)
                else:
                    keys, hashes, idents, removed = self._journal
                    keys.append(result.key)
                    hashes.append(meta.h)
                    idents.append(meta.ident)
                    removed.append(meta.removed)
            else:
                reason = result.reason or "no reason given"
                if result.outcome is Outcome.REJECTED:
                    self.counts.rejected += 1
                else:
                    self.counts.dead_lettered += 1
                self._rejected.append((result.key, f"{result.outcome.value}: {reason}"))
                if len(self.counts.failures) < 20:
                    self.counts.failures.append((result.key, result.outcome.value, reason))
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        store = self.store
        keys, hashes, idents, removed = self._journal
        store.exec_sql("begin")
        try:
            store.append_journal(self.sync, self.run_id, keys, hashes, idents, removed)
            store.append_ledger(self.sync, self._ledger)
            store.append_history(self._history)
            store.append_rejected(self.run_id, self.sync, "deliver", self._rejected)
            store.exec_sql("commit")
        except BaseException:
            store.exec_sql("rollback")
            raise
        self._reset()
        self._last_flush = time.monotonic()
