"""An ASGI app served on loopback for the official Snowflake connector (fakesnow's server behind
a recorder, or a server answering with Snowflake's own result encoding)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def serve(app: Any) -> Iterator[dict[str, Any]]:
    """``app`` served by uvicorn on a free loopback port; yields the connector arguments
    pointing at it (plain HTTP, no telemetry) and stops the server on leaving."""
    import uvicorn

    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while thread.is_alive() and not uv.started:
        time.sleep(0.05)
    assert uv.started
    try:
        yield {
            "host": "127.0.0.1",
            "port": port,
            "protocol": "http",
            "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
            "network_timeout": 5,
        }
    finally:
        uv.should_exit = True
        thread.join()
