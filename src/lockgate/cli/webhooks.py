"""`lockgate webhooks`: receive Customer.io reporting webhooks and load them.

lockgate webhooks serve --port 8787      # receive, spool durably, load in the background
lockgate webhooks load                   # one-shot: load everything spooled
lockgate webhooks status                 # how many events wait in the spool
lockgate webhooks rejects                # events the warehouse refused, with its reason
lockgate webhooks load --retry-rejected  # put them back in the queue and load
"""

from __future__ import annotations

from pathlib import Path

import click

from lockgate.cli.options import json_option, open_project, project_option
from lockgate.console import RichConsole
from lockgate.errors import TransientError
from lockgate.project.loader import Project
from lockgate.project.models import WebhooksConfig, url_host
from lockgate.webhooks.verify import signing_key


def _config(project: Project) -> WebhooksConfig:
    return project.config.webhooks or WebhooksConfig()


@click.group()
def webhooks() -> None:
    """Receive Customer.io reporting webhooks and load them into the warehouse."""


@webhooks.command()
@project_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port",
    default=8787,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on.",
)
@click.option(
    "--load-interval",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between background loads into the warehouse.",
)
@click.option("--no-load", is_flag=True, help="Only receive and spool; load later with `load`.")
def serve(project_path: Path, host: str, port: int, load_interval: float, no_load: bool) -> None:
    """Receive webhooks at POST /webhooks/customerio (signing key from the env).

    Each signed event is on disk before it is answered 200. A signed body that is not an
    event is kept too and loaded into the `other` table; a body over 10 MB is answered 413
    (docs/webhooks.md)."""
    import uvicorn

    from lockgate.webhooks.app import PATH, create_app
    from lockgate.webhooks.load import BackgroundLoader
    from lockgate.webhooks.spool import Spool

    project = open_project(project_path)
    config = _config(project)
    key = signing_key(config)
    console = RichConsole()
    loader = None if no_load else BackgroundLoader(project, interval=load_interval, console=console)
    spool = Spool(project.spool_dir)
    app = create_app(
        spool=spool,
        signing_key=key,
        replay_window=config.replay_window,
        on_startup=loader.start if loader else None,
        on_shutdown=loader.stop if loader else None,
    )
    console.info(f"receiving Customer.io webhooks at http://{host}:{port}{PATH}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@webhooks.command()
@project_option
@json_option
@click.option(
    "--wait",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to wait for a busy DuckDB file before giving up.",
)
@click.option(
    "--retry-rejected",
    is_flag=True,
    help="First put the events the warehouse refused back in the queue (after fixing the cause).",
)
def load(project_path: Path, as_json: bool, wait: float, retry_rejected: bool) -> None:
    """Load every spooled event into the warehouse (safe to run while `serve` runs).

    An event the warehouse refuses is set aside in the quarantine with the warehouse's error
    (see `lockgate webhooks rejects`); the others load. Events loaded more than 8 days ago
    (past Customer.io's 7 days of retries) are then removed from the spool, as `serve` does.
    """
    import json

    from lockgate.webhooks.load import KEEP_LOADED, load_pending, prune_spool
    from lockgate.webhooks.spool import Spool

    project = open_project(project_path)
    console = RichConsole(quiet=as_json)
    spool = Spool(project.spool_dir)
    try:
        if retry_rejected:
            released = spool.release_rejected()
            console.info(f"{released} rejected events back in the queue")
        result = load_pending(project, spool=spool, wait=wait, console=console)
        pruned = prune_spool(spool)
    finally:
        spool.close()
    if pruned:
        console.info(
            f"removed {pruned} events loaded more than {KEEP_LOADED // 86400} days ago "
            "from the spool"
        )
    if as_json:
        rejected = [
            {
                "event_id": r.event_id,
                "object_type": r.object_type,
                "metric": r.metric,
                "reason": r.reason,
            }
            for r in result.rejected
        ]
        summary = {
            "loaded": result.loaded,
            "tables": result.tables,
            "rejected": rejected,
            "quarantined": result.quarantined,
            "pruned": pruned,
        }
        click.echo(json.dumps(summary))
        return
    if not result.loaded:
        console.info("nothing to load")
    else:
        rows = sorted(result.tables.items())
        console.table(f"loaded {result.loaded} events", ["table", "events"], rows)
    if result.rejected:
        console.table(
            f"set aside {len(result.rejected)} events the warehouse refused",
            ["event_id", "metric", "reason"],
            [(r.event_id, f"{r.object_type}/{r.metric}", r.reason) for r in result.rejected],
        )
    if result.quarantined:
        console.warn(
            f"{result.quarantined} event(s) in the quarantine: see `lockgate webhooks rejects`; "
            "fix the cause and run `lockgate webhooks load --retry-rejected`"
        )


@webhooks.command()
@project_option
@json_option
def status(project_path: Path, as_json: bool) -> None:
    """How many events the spool holds and how many wait for loading."""
    import json

    from lockgate.webhooks.spool import Spool

    project = open_project(project_path)
    spool = Spool(project.spool_dir)
    try:
        stats = spool.stats()
    finally:
        spool.close()
    if as_json:
        click.echo(
            json.dumps(
                {"stored": stats.total, "unloaded": stats.unloaded, "rejected": stats.rejected}
            )
        )
    else:
        RichConsole().info(
            f"{stats.total} events stored, {stats.unloaded} waiting to load, "
            f"{stats.rejected} rejected (in quarantine)"
        )


@webhooks.command()
@project_option
@json_option
def rejects(project_path: Path, as_json: bool) -> None:
    """The events the warehouse refused: id, metric, when, and the warehouse's error.

    They stay in the spool's quarantine, raw body included, until
    `lockgate webhooks load --retry-rejected` puts them back in the queue.
    """
    import json
    from datetime import UTC, datetime

    import orjson

    from lockgate.webhooks.schemas import parse_json
    from lockgate.webhooks.spool import Spool

    project = open_project(project_path)
    spool = Spool(project.spool_dir)
    try:
        records = spool.rejected()
    finally:
        spool.close()
    rows = []
    for record in records:
        try:
            doc = parse_json(record.body)
        except orjson.JSONDecodeError:
            doc = None
        doc = doc if isinstance(doc, dict) else {}
        rows.append(
            {
                "event_id": record.event_id,
                "object_type": doc.get("object_type"),
                "metric": doc.get("metric"),
                "received_at": datetime.fromtimestamp(record.received_at, UTC).isoformat(),
                "rejected_at": datetime.fromtimestamp(record.rejected_at, UTC).isoformat(),
                "reason": record.reason,
                "body": record.body.decode("utf-8", "replace"),
            }
        )
    if as_json:
        click.echo(json.dumps(rows))
        return
    console = RichConsole()
    if not rows:
        console.info("no rejected events")
        return
    console.table(
        f"{len(rows)} rejected events (retry: `lockgate webhooks load --retry-rejected`)",
        ["event_id", "metric", "received_at", "reason"],
        [
            (r["event_id"], f"{r['object_type']}/{r['metric']}", r["received_at"], r["reason"])
            for r in rows
        ],
    )


@webhooks.command()
@click.option(
    "--url",
    default="http://127.0.0.1:8787/webhooks/customerio",
    show_default=True,
    help="The receiver to POST to.",
)
@click.option(
    "--emulator",
    "emulator_url",
    help="A running `lockgate emulator`; its people get the engagement.",
)
@click.option("--people", default=10, show_default=True, help="Made-up people, without --emulator.")
@click.option("--channel", default="email", show_default=True, help="The object type.")
@click.option(
    "--metrics",
    default="sent,delivered,opened,clicked",
    show_default=True,
    help="Comma-separated metrics each person gets, in order.",
)
@click.option("--duplicate-every", default=0, help="Resend every n-th event (0: never).")
@click.option("--lanes", default=1, show_default=True, help="Ordered streams sent at once.")
@json_option
def send(
    url: str,
    emulator_url: str | None,
    people: int,
    channel: str,
    metrics: str,
    duplicate_every: int,
    lanes: int,
    as_json: bool,
) -> None:
    """Send signed engagement webhooks like Customer.io does (for local testing).

    Signs with CUSTOMERIO_WEBHOOK_SIGNING_KEY, retries failures and keeps the order.
    """
    import json

    from lockgate.emulator.webhook_sender import (
        PersonLike,
        Recipient,
        send_events,
        simulate_engagement,
    )

    key = signing_key(WebhooksConfig())
    recipients: list[PersonLike]
    if emulator_url:
        from lockgate.emulator import EmulatorInspector

        with EmulatorInspector(emulator_url) as inspector:
            recipients = list(inspector.people())
    else:
        recipients = [
            Recipient(str(i), f"person{i}@example.com", f"cio{i:06d}") for i in range(1, people + 1)
        ]
    events = simulate_engagement(
        people=recipients,
        channel=channel,
        metrics=[m.strip() for m in metrics.split(",") if m.strip()],
    )
    report = send_events(url, key, events, duplicate_every=duplicate_every, lanes=lanes)
    summary = {
        "events": len(events),
        "acknowledged": len(report.acknowledged),
        "duplicates": report.duplicates,
        "retries": report.retries,
        "held": len(report.held),
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        RichConsole().info(
            f"sent {summary['events']} events to {url_host(url)}: "
            f"{summary['acknowledged']} acknowledged, "
            f"{summary['duplicates']} duplicates, {summary['retries']} retries, "
            f"{summary['held']} held back"
        )
    if report.held:
        raise TransientError(
            f"{len(report.held)} events were never acknowledged by {url_host(url)}",
            hint="check the receiver is running and uses the same signing key",
        )
