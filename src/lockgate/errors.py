"""The one exception hierarchy for Lockgate.

Every error a user can see carries a ``reason`` (what went wrong, quoting the
offending value in backticks) and a ``hint`` (what to do next). Whether an error
can be retried is part of its type, never decided by matching message text::

    LockgateError
     ├── TransientError                 retry may succeed (deliver.py retries these only)
     │    └── DestinationTransientError  429, 5xx, timeouts, dropped connections
     └── TerminalError                  retrying the same input will fail again
          ├── ConfigError               lockgate.yml / syncs/*.yml; carries file and line
          ├── MissingDependencyError    an optional driver is not installed
          ├── SourceError               a warehouse query or connection failed
          ├── DestinationError          the destination refused a request for good (4xx)
          │    └── DestinationAuthError  401/403: credentials wrong; stops the whole run
          ├── StateError                the state store is unusable or locked
          │    └── StateUnwritableError  its disk or folder refuses writes (full, read-only)
          ├── ContractError             a guardrail refused the run (data contract)
          ├── NothingNamedError         `--only` names no record of the sync
          └── StepError                 a pipeline step failed; wraps the cause once

Example::

    raise ConfigError(
        "unknown key `atributes`",
        hint="did you mean `attributes`?",
        file="syncs/profile.yml",
        line=7,
    )
"""

from __future__ import annotations

import re
from typing import Any

#: the userinfo of a URL (`https://user:password@host`): a proxy's or a webhook's credentials
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s`'\"<>]*@")


#: a value a message quotes (a reject reason, an answer of Customer.io) is shown whole up to
#: this many characters; a longer one is cut to its first :data:`QUOTED_HEAD` characters and
#: followed by its length, so a 5,000-character value gives a reason of a line, not of 5,000
#: characters (in the report, `lockgate runs show`, the run log)
QUOTED_CHARS = 100
QUOTED_HEAD = 80


def shorten(text: str, limit: int = QUOTED_CHARS, head: int = QUOTED_HEAD) -> str:
    """``text`` as a message quotes it: whole up to ``limit`` characters, else its first
    ``head`` and `… (N characters)`. Characters, not bytes: none is cut in two.
    :func:`lockgate.sync.mapping.quoted` is the same in SQL, for the reasons made there."""
    if len(text) <= limit:
        return text
    return f"{text[:head]}… ({len(text)} characters)"


def without_userinfo(text: str) -> str:
    """``text`` (a URL, or a message quoting URLs) with each URL's user and password replaced
    by `***` (`http://***@proxy:8080/track`): a `track_url` or `app_url` may carry a proxy's
    credentials, and messages end up in terminals, CI logs, the run history and alerts."""
    return _USERINFO.sub(r"\g<scheme>***@", text) if "@" in text else text


class LockgateError(Exception):
    """Base of every error Lockgate raises on purpose."""

    retryable: bool = False
    #: a command's `--json` has already printed this error in its own document (see
    #: :func:`lockgate.cli.options.json_option`)
    printed_as_json: bool = False
    #: the report (a ``RunReport``) of the run this error stopped, when the run got as far as
    #: its diff: a guardrail's refusal carries the counts and the guardrails' verdicts, so
    #: `sync` (and `--json`) show why it stopped as `plan` would
    report: Any = None
    #: the id of the sync's first run in the command, when this error stopped its follow-up
    #: run (`sync --all`, docs/sync.md "Emails that change hands between syncs")
    follow_up_of: str | None = None

    def __init__(self, reason: str, *, hint: str | None = None) -> None:
        # no message shows a URL's credentials, whichever URL or library text it quotes
        reason = without_userinfo(reason)
        hint = without_userinfo(hint) if hint else hint
        super().__init__(reason)
        self.reason = reason
        self.hint = hint

    def __str__(self) -> str:
        return self.reason if not self.hint else f"{self.reason}\n  hint: {self.hint}"


class TransientError(LockgateError):
    """A failure that may go away if the same thing is tried again later."""

    retryable = True


class TerminalError(LockgateError):
    """A failure that will happen again for the same input: fix the input or config."""

    retryable = False


class DestinationTransientError(TransientError):
    """The destination answered 429 or 5xx, timed out, or dropped the connection.

    ``retry_after`` is the server's ``Retry-After`` in seconds when it sent one.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(reason, hint=hint)
        self.status = status
        self.retry_after = retry_after


class ConfigError(TerminalError):
    """The project file or a sync file is invalid. ``location`` is ``file:line`` when known."""

    def __init__(
        self,
        reason: str,
        *,
        hint: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(reason, hint=hint)
        self.file = file
        self.line = line

    @property
    def location(self) -> str | None:
        if self.file is None:
            return None
        return f"{self.file}:{self.line}" if self.line else self.file

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        text = f"{where}{self.reason}"
        return text if not self.hint else f"{text}\n  hint: {self.hint}"


class MissingDependencyError(TerminalError):
    """An optional driver is missing; the hint is the exact install command."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"the `{package}` package is needed for this and is not installed",
            hint=f'pip install "lockgate[{extra}]"',
        )
        self.package = package
        self.extra = extra


class SourceError(TerminalError):
    """A warehouse connection or query failed."""


class DestinationError(TerminalError):
    """The destination refused a request in a way that retrying will not fix."""

    def __init__(self, reason: str, *, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(reason, hint=hint)
        self.status = status


class DestinationAuthError(DestinationError):
    """The destination refused the credentials (401/403); every later request would fail too."""


class DestinationUnavailableError(DestinationError):
    """Batch after batch got no answer but errors (connection refused, timeouts, 429/5xx)
    through every retry: the destination is down or unreachable, so the run stops instead of
    dead-lettering everything left. Records not delivered wait for the next run."""

    #: what the destination yields for the batch whose failure stopped the run, its records
    #: dead-lettered: they were sent, so the caller records them (a run's `sent` counts them)
    #: before it stops
    settled: Any = None


class ConnectionCheckError(TerminalError):
    """`lockgate validate --connect` found a warehouse, model or credential that does not work."""


class StateError(TerminalError):
    """The state store (snapshots, ledgers, run history) cannot be used."""


class StateUnwritableError(StateError):
    """The state's disk or folder refused a write: full, read-only, or not the user's to
    write. What is already in it can still be read (`lockgate runs` lists `runs.json`)."""


class ContractError(TerminalError):
    """A data-contract guardrail refused the run before anything was sent."""


class NothingNamedError(TerminalError):
    """`lockgate plan/sync --only` named values that match no row of the sync's model and no
    record it sent before (with several syncs, the others go on and this one is skipped)."""


class StepError(TerminalError):
    """A pipeline step failed. Raised once by ``sync/run.py``, wrapping the cause."""

    def __init__(self, step: str, run_id: str, cause: BaseException, *, plan: bool = False) -> None:
        if plan:  # a plan records no run: its id names nothing the user can look up
            where, default = "in the plan", "fix the cause above, then plan again"
        else:
            where = f"in run `{run_id}`"
            default = (
                "fix the cause above, then run the sync again; nothing undelivered was "
                f"committed (run `{run_id}`)"
            )
        hint = getattr(cause, "hint", None) or default
        # the cause's own hint becomes this error's hint: shown once, not also in the reason
        text = str(cause).removesuffix(f"\n  hint: {getattr(cause, 'hint', None)}")
        super().__init__(f"step `{step}` failed {where}: {text}", hint=hint)
        self.step = step
        self.run_id = run_id
        self.cause = cause

    def __str__(self) -> str:
        return self.reason if not self.hint else f"{self.reason}\n  hint: {self.hint}"
