"""The engagement loop, end to end on one machine: emulator → webhooks → warehouse → sync.

The local Customer.io emulator's people "receive" an email campaign; the emulator's webhook
sender POSTs the signed reporting webhooks (sent, delivered, and for some people opened and
clicked) to a real receiver on a loopback port; the receiver spools them durably; the loader
puts them in the warehouse's ``customerio.email`` table; and a people sync built on a SQL
model over that table (``last_email_opened_at``, ``last_email_clicked_at``, ``email_opens``)
sends the derived attributes back into Customer.io.

Example (inside the demo, with the emulator served and the CUSTOMERIO_* env pointing at it)::

    result = run_engagement_loop(project_dir, emulator, console=console)
    result.acknowledged, result.loaded, result.report.delivered
"""

from __future__ import annotations

import contextlib
import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockgate.console import Console
from lockgate.project.loader import load_project
from lockgate.project.models import WebhooksConfig
from lockgate.webhooks.app import PATH, create_app
from lockgate.webhooks.load import load_pending, warehouse_name
from lockgate.webhooks.spool import Spool

SYNC_NAME = "email_engagement"

ENGAGEMENT_SQL = """\
-- Derived from Customer.io reporting webhooks, loaded by `lockgate webhooks load`.
select
    identifier_id                                      as customer_id,
    max(timestamp) filter (where metric = 'opened')    as last_email_opened_at,
    max(timestamp) filter (where metric = 'clicked')   as last_email_clicked_at,
    count(*) filter (where metric = 'opened')          as email_opens
from {dataset}.email
where identifier_id is not null
group by 1
having count(*) filter (where metric = 'opened') > 0
"""

ENGAGEMENT_SYNC = """\
# Engagement back into Customer.io: attributes derived from the reporting webhooks.
name: {name}
source: {source}
model: models/{name}.sql
kind: people
primary_key: customer_id
identify_by: {{id: customer_id}}
mode: update
attributes:
  last_email_opened_at: {{column: last_email_opened_at, type: timestamp}}
  last_email_clicked_at: {{column: last_email_clicked_at, type: timestamp}}
  email_opens: {{column: email_opens, type: integer}}
"""


def add_engagement_sync(root: Path, *, name: str = SYNC_NAME) -> str:
    """Write ``models/<name>.sql`` and ``syncs/<name>.yml`` into a project; return the name."""
    project = load_project(root)
    config = project.config.webhooks or WebhooksConfig()
    (root / "models").mkdir(exist_ok=True)
    (root / "syncs").mkdir(exist_ok=True)
    (root / "models" / f"{name}.sql").write_text(ENGAGEMENT_SQL.format(dataset=config.dataset))
    source = warehouse_name(project)
    (root / "syncs" / f"{name}.yml").write_text(ENGAGEMENT_SYNC.format(name=name, source=source))
    return name


@contextlib.contextmanager
def serving(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yield its URL. The
    app's startup and shutdown handlers run (the receiver's background loader)."""
    from lockgate.emulator.server import serve_in_thread

    with serve_in_thread(app, host=host, lifespan=True) as (url, _tls):
        yield url


@dataclass(frozen=True)
class LoopResult:
    """What one engagement loop did."""

    people: int
    """People in the emulator who received the campaign."""
    openers: int
    """People who opened it (and got `last_email_opened_at`)."""
    sent: int
    """Webhook events the sender produced."""
    acknowledged: int
    """Events the receiver answered 2xx (each durable before its answer)."""
    loaded: int
    """Events loaded into the warehouse."""
    report: Any
    """The engagement sync's :class:`~lockgate.sync.run.RunReport`."""


def run_engagement_loop(
    root: Path,
    emulator: Any,
    *,
    console: Console,
    open_share: float = 0.5,
    max_people: int | None = None,
    lanes: int = 8,
    seed: int = 6,
) -> LoopResult:
    """Engagement in the emulator → webhooks → warehouse → a sync back into Customer.io.

    ``emulator`` is a :class:`~lockgate.emulator.Emulator` whose Track API the project's
    Customer.io destination points at (the demo sets ``CUSTOMERIO_*`` for that). Every person
    in it (or the first ``max_people``) gets an email (sent, delivered); ``open_share`` of them
    open and click it. Events go out on ``lanes`` ordered streams at once, like several
    webhooks, so the receiver's group commit shares fsyncs between them.
    """
    from lockgate.emulator.webhook_sender import send_events, simulate_engagement
    from lockgate.sync.run import run_sync

    project = load_project(root)
    config = project.config.webhooks or WebhooksConfig()
    people = sorted(emulator.people(), key=lambda p: p.cio_id)[:max_people]
    rng = random.Random(seed)
    openers = [p for p in people if rng.random() < open_share]
    others = [p for p in people if p not in openers]
    engaged = ["sent", "delivered", "opened", "clicked"]
    events = simulate_engagement(people=openers, metrics=engaged, seed=seed)
    events += simulate_engagement(people=others, metrics=engaged[:2], seed=seed + 1)
    key = secrets.token_hex(16).encode()
    spool = Spool(project.spool_dir)
    try:
        app = create_app(spool=spool, signing_key=key, replay_window=config.replay_window)
        with serving(app) as url:
            console.info(f"webhook receiver listening on {url}{PATH}")
            report = send_events(url + PATH, key, events, duplicate_every=7, lanes=lanes)
        console.info(
            f"Customer.io (emulated) sent {len(events)} reporting webhooks "
            f"(+{report.duplicates} duplicate deliveries); {len(report.acknowledged)} acknowledged"
        )
        loaded = load_pending(project, spool=spool, console=console)
    finally:
        spool.close()
    name = add_engagement_sync(project.root)
    run = run_sync(load_project(project.root), name, console=console)
    return LoopResult(
        people=len(people),
        openers=len(openers),
        sent=len(events),
        acknowledged=len(report.acknowledged),
        loaded=loaded.loaded,
        report=run,
    )
