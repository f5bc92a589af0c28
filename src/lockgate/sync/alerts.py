"""Telling someone when a run fails, ends partial, or recovers (`alerts:` in lockgate.yml).

A scheduled sync that fails at 3 a.m. is found by whoever reads the log next; an alert finds
them. At the end of each `lockgate sync` run (and so of each `lockgate schedule` run), the
run's outcome is compared with the sync's previous run:

- ``failed``: an error or a guardrail stopped it (a run stopped on purpose by SIGTERM or
  Ctrl-C, and a run of named records, `--only`, alert nobody);
- ``partial``: Customer.io rejected records or they were dead-lettered;
- ``recovered``: a success after a failed or partial run, so an alert is not left standing;
- ``warning``: a success with a circuit breaker at its `warn_at` share of the limit (a run
  that would stop if the trend went on: `max_changed` at 21% against 25%).

A failed, partial or warning run alerts when it starts a streak: a sync scheduled every 15
minutes that stays broken alerts once, not 96 times a day (`every_run: true` alerts each one).

Each alert configured for that outcome (and sync) gets one POST: the outcome as JSON, or a
Slack incoming-webhook message. An alert that cannot be sent is a warning; it never changes
the run. The URL is a secret (a webhook URL carries its token): only its host is ever shown.

Example::

    notify(project, "profile", run_id, "failed", previous="success",
           counts={}, error="max_cleared ...", console=console)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from lockgate.console import Console
from lockgate.errors import ConfigError, LockgateError
from lockgate.project.loader import Project
from lockgate.project.models import resolve_env, url_host

#: seconds an alert endpoint gets to answer
TIMEOUT = 10.0


def outcome(
    status: str, previous: str | None, *, every_run: bool = False, near: bool = False
) -> str | None:
    """The alert a run's ``status`` calls for, given the sync's ``previous`` run's status
    (`warning` for a success that was ``near`` a limit): a failed or partial run alerts when
    it starts a streak (or with ``every_run``), a success after one alerts as `recovered`, and
    a success ``near`` a guardrail's limit as `warning` when it starts a streak."""
    if status in ("failed", "partial"):
        return status if every_run or previous != status else None
    if status == "success" and previous in ("failed", "partial"):
        return "recovered"
    if status == "success" and near and (every_run or previous != "warning"):
        return "warning"
    return None


def near_limit(counts: dict[str, Any]) -> list[str]:
    """The guardrails a run's report shows near their limit (`warn_at`)."""
    return [str(g.get("name")) for g in counts.get("guardrails") or () if g.get("near")]


def notify(
    project: Project,
    sync: str,
    run_id: str,
    status: str,
    *,
    previous: str | None,
    counts: dict[str, Any],
    error: str | None,
    console: Console,
) -> int:
    """POST the run's outcome to every alert configured for it; returns how many were sent."""
    wanted = []
    near = bool(near_limit(counts))
    for alert in project.config.alerts:
        event = outcome(status, previous, every_run=alert.every_run, near=near)
        if event in alert.on and (alert.syncs is None or sync in alert.syncs):
            wanted.append((alert, event))
    if not wanted:
        return 0
    import httpx  # only a run that alerts pays for it

    sent = 0
    for alert, event in wanted:
        message = _message(project.config.name, sync, run_id, event, counts, error)
        host = "the alert URL"
        try:
            url = resolve_env(alert.url, field="alerts.url", at=alert) or ""
            host = url_host(url) or host
            body: dict[str, Any] = (
                {"text": message}
                if alert.format == "slack"
                else _document(project.config.name, sync, run_id, event, status, counts, error)
                | {"text": message}
            )
            answer = httpx.post(
                url,
                content=orjson.dumps(body),
                headers={"content-type": "application/json"},
                timeout=TIMEOUT,
            )
        except (LockgateError, httpx.HTTPError, ValueError) as exc:
            # never the URL itself, nor an exception text that may quote it
            reason = exc.reason if isinstance(exc, LockgateError) else type(exc).__name__
            if isinstance(exc, ConfigError) and exc.location:  # the alert's line
                reason = f"{exc.location}: {reason}"
            console.warn(f"{sync}: the `{event}` alert to {host} was not sent: {reason}")
            continue
        if answer.status_code >= 300:
            console.warn(f"{sync}: the `{event}` alert to {host} was answered {answer.status_code}")
            continue
        sent += 1
    return sent


def _document(
    project: str,
    sync: str,
    run_id: str,
    event: str,
    status: str,
    counts: dict[str, Any],
    error: str | None,
) -> dict[str, Any]:
    changes = counts.get("changes") or {}
    return {
        "source": "lockgate",
        "project": project,
        "sync": sync,
        "event": event,
        "status": status,
        "run_id": run_id,
        "error": error,
        "to_send": changes.get("to_send"),
        "delivered": counts.get("delivered"),
        "rejected_by_mapping": changes.get("rejected"),
        "rejected_by_customerio": counts.get("rejected_by_api"),
        "dead_lettered": counts.get("dead_lettered"),
        "near_limit": near_limit(counts),
        "at": datetime.now(UTC).isoformat(),
    }


def _message(
    project: str,
    sync: str,
    run_id: str,
    event: str,
    counts: dict[str, Any],
    error: str | None,
) -> str:
    """One line a person reads in a chat channel."""
    head = f"Lockgate `{project}`: sync `{sync}`"
    if event == "failed":
        return (
            f"{head} failed: {error or 'see the run'} (run {run_id}; `lockgate runs show {run_id}`)"
        )
    delivered = counts.get("delivered", 0)
    if event == "partial":
        return (
            f"{head} finished with records not delivered: {delivered:,} delivered, "
            f"{counts.get('rejected_by_api', 0):,} rejected by Customer.io, "
            f"{counts.get('dead_lettered', 0):,} dead-lettered; the next run sends them again "
            f"(run {run_id}; `lockgate runs show {run_id}`)"
        )
    near = [g for g in counts.get("guardrails") or () if g.get("near")]
    nearing = "; ".join(f"{g['name']} {g['actual']} against {g['limit']}" for g in near)
    if event == "warning":
        return (
            f"{head} is near a guardrail's limit: {nearing}; the run went on, a run over the "
            f"limit stops before sending (run {run_id}; `lockgate runs show {run_id}`)"
        )
    return f"{head} recovered: {delivered:,} delivered (run {run_id})" + (
        f"; near a guardrail's limit: {nearing}" if near else ""
    )
