"""Run an ASGI app with uvicorn on loopback in a background thread (optionally over TLS).

Example::

    with serve_in_thread(app, port=0) as base_url:
        httpx.get(base_url + "/_emulator/stats")
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from lockgate.errors import LockgateError, MissingDependencyError


@dataclass(frozen=True)
class TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost (made with trustme)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_files(directory: Path) -> TLSFiles:
    try:
        import trustme  # only needed for TLS: the `emulator` extra
    except ModuleNotFoundError:
        raise MissingDependencyError("trustme", "emulator") from None

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca_cert))
    cert.private_key_pem.write_to_path(str(files.server_key))
    with files.server_cert.open("wb") as fh:
        for blob in cert.cert_chain_pems:
            fh.write(blob.bytes())
    return files


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted sockets inherit TCP_NODELAY on Linux; without it a response written in two
    # pieces waits ~40 ms for the client's delayed ACK (Nagle), per request
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LockgateError(
            f"cannot listen on `{host}:{port}`: {exc.strerror}",
            hint="pick another --port, or 0 for any free port",
        ) from None
    # listening at once: a caller that reads the printed address and connects before the
    # server's loop starts is queued in the backlog instead of refused (uvicorn listens again,
    # which only sets the backlog)
    sock.listen(2048)
    return sock


def uvicorn_config(
    app: Any, host: str, port: int, tls: TLSFiles | None, *, lifespan: bool = False
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on" if lifespan else "off",
        timeout_graceful_shutdown=1,
        ssl_certfile=str(tls.server_cert) if tls else None,
        ssl_keyfile=str(tls.server_key) if tls else None,
    )


class PromptServer(uvicorn.Server):
    """A uvicorn server that stops as soon as it is told to.

    uvicorn's own checks its exit flag every 0.1 s and sleeps another 0.1 s when shutting
    down, whether or not a connection is open: ~0.15 s a stop, paid by every test that starts
    an emulator (over a thousand of them). This one wakes at :meth:`stop` and waits for the
    responses in flight (up to the graceful-shutdown timeout) by polling every 5 ms.
    """

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    def stop(self) -> None:
        """Ask the server to exit, from any thread."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed already
                loop.call_soon_threadsafe(wake.set)

    async def main_loop(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()  # an idle one closes now, a busy one after its response
        loop, limit = asyncio.get_running_loop(), self.config.timeout_graceful_shutdown
        deadline = loop.time() + limit if limit is not None else float("inf")
        while (state.connections or state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        for task in state.tasks:
            task.cancel(msg="the server stopped")
        for server in self.servers:
            await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()  # the app's shutdown handlers, when it has a lifespan


@contextlib.contextmanager
def serve_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, tls: bool = False, lifespan: bool = False
) -> Iterator[tuple[str, TLSFiles | None]]:
    """Serve ``app`` until the block ends; yields ``(base_url, tls_files)``. With
    ``lifespan``, the app's startup and shutdown handlers run as the server starts and stops."""
    with tempfile.TemporaryDirectory(prefix="lockgate-emulator-") as tmp:
        files = make_tls_files(Path(tmp)) if tls else None
        sock = bind(host, port)
        actual_port = sock.getsockname()[1]
        server = PromptServer(uvicorn_config(app, host, actual_port, files, lifespan=lifespan))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="lockgate-emulator", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise LockgateError("the emulator server did not start", hint="run with --debug")
            time.sleep(0.005)
        scheme = "https" if tls else "http"
        try:
            yield f"{scheme}://{host}:{actual_port}", files
        finally:
            server.stop()
            thread.join(timeout=10)
            sock.close()
