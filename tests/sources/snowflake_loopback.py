"""An ASGI app served on loopback for the official Snowflake connector (fakesnow's server behind
a recorder, or a server answering with Snowflake's own result encoding)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def serve(app: Any) -> Iterator[dict[str, Any]]:
    """``app`` served by uvicorn on a free loopback port; yields the connector arguments
    pointing at it (plain HTTP, no telemetry) and stops the server on leaving."""
    from lockgate.emulator.server import serve_in_thread

    with serve_in_thread(app) as (url, _tls):
        port = int(url.rsplit(":", 1)[1])
        yield {
            "host": "127.0.0.1",
            "port": port,
            "protocol": "http",
            "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
            "network_timeout": 5,
        }
