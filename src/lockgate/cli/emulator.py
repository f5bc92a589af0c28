"""``lockgate emulator``: run the local Customer.io emulator in the foreground."""

from __future__ import annotations

import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import click

from lockgate.emulator import config as C


@click.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="TCP port (0 = any free port).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--site-id",
    envvar="LOCKGATE_EMULATOR_SITE_ID",
    default=C.DEFAULT_SITE_ID,
    show_default=True,
    help="Track site id. [env: LOCKGATE_EMULATOR_SITE_ID]",
)
@click.option(
    "--api-key",
    envvar="LOCKGATE_EMULATOR_API_KEY",
    default=C.DEFAULT_API_KEY,
    show_default=True,
    help="Track API key. [env: LOCKGATE_EMULATOR_API_KEY]",
)
@click.option(
    "--write-key",
    envvar="LOCKGATE_EMULATOR_WRITE_KEY",
    default=C.DEFAULT_WRITE_KEY,
    show_default=True,
    help="Pipelines write key. [env: LOCKGATE_EMULATOR_WRITE_KEY]",
)
@click.option(
    "--app-api-key",
    envvar="LOCKGATE_EMULATOR_APP_API_KEY",
    default=C.DEFAULT_APP_API_KEY,
    show_default=True,
    help="App API bearer key. [env: LOCKGATE_EMULATOR_APP_API_KEY]",
)
@click.option(
    "--latency-ms",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Added to every request.",
)
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=0),
    default=1000.0,
    show_default=True,
    help="Track requests/second (0 = off); e.g. 100 for the older documented limit.",
)
@click.option(
    "--fault-5xx", type=click.FloatRange(0, 1), default=0.0, help="Fraction answered 503."
)
@click.option(
    "--fault-429",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction answered 429 + Retry-After.",
)
@click.option(
    "--fault-timeout", type=click.FloatRange(0, 1), default=0.0, help="Fraction held, then dropped."
)
@click.option(
    "--fault-reset",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction dropped with no response.",
)
@click.option("--seed", default=0, show_default=True, help="Fault RNG seed (runs repeat).")
@click.option("--tls", is_flag=True, help="Serve HTTPS with a throwaway self-signed CA.")
def emulator(
    port: int,
    host: str,
    site_id: str,
    api_key: str,
    write_key: str,
    app_api_key: str,
    latency_ms: int,
    rate_limit: float,
    fault_5xx: float,
    fault_429: float,
    fault_timeout: float,
    fault_reset: float,
    seed: int,
    tls: bool,
) -> None:
    """Run a local Customer.io (Track v1/v2, Pipelines, App API) until Ctrl-C."""
    import uvicorn

    from lockgate.emulator import Emulator, EmulatorConfig, FaultConfig
    from lockgate.emulator.server import bind, make_tls_files, uvicorn_config

    config = EmulatorConfig(
        site_id=site_id,
        api_key=api_key,
        write_key=write_key,
        app_api_key=app_api_key,
        track_rate_limit=rate_limit or None,
        faults=FaultConfig(
            error_5xx=fault_5xx,
            error_429=fault_429,
            timeout=fault_timeout,
            reset=fault_reset,
            latency_ms=latency_ms,
            seed=seed,
        ),
    )
    emu = Emulator(config)
    emu.own_process()  # this process is the emulator: keep the collector off its store
    sock = bind(host, port)  # bind first so `--port 0` can print the port it got
    port = sock.getsockname()[1]
    # a folder only for TLS files: a plain-HTTP emulator killed by its caller leaves nothing
    folder = tempfile.TemporaryDirectory(prefix="lockgate-emulator-") if tls else nullcontext(None)
    with folder as tmp:
        files = make_tls_files(Path(tmp)) if tmp else None
        scheme = "https" if tls else "http"
        click.echo(f"Customer.io emulator on {scheme}://{host}:{port}", nl=True)
        click.echo(f"  Track:     /api/v1, /api/v2   Basic {site_id}:<api key>")
        click.echo("  Pipelines: /v1/identify ...   Basic <write key>:")
        click.echo("  App API:   /v1/customers ...  Bearer <app api key>")
        click.echo("  Inspect:   /_emulator/people, /events, /stats ...")
        if files:
            click.echo(f"  CA cert:   {files.ca_cert}")
        sys.stdout.flush()
        uvicorn.Server(uvicorn_config(emu.app, host, port, files)).run(sockets=[sock])
