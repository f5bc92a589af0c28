"""A synchronous ``httpx`` transport that calls an ASGI app in-process.

``httpx.ASGITransport`` works only with ``httpx.AsyncClient``. Lockgate's delivery code and most
tests use a plain ``httpx.Client``, so this transport runs the app on a private event loop in a
daemon thread and hands each request to it. No sockets are involved; the app's exceptions
(including the ``httpx`` transport errors raised for injected dropped connections) reach the caller.

Example::

    client = httpx.Client(transport=SyncASGITransport(emu.app), base_url="http://emulator")
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx


class SyncASGITransport(httpx.BaseTransport):
    """Send ``httpx.Client`` requests to an ASGI app on a background event loop."""

    def __init__(self, app: Any) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lockgate-emulator-asgi", daemon=True
        )
        self._thread.start()

    async def _send(self, request: httpx.Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response = await self._inner.handle_async_request(request)
        body = await response.aread()
        return response.status_code, list(response.headers.raw), body

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        content = request.read()
        copy = httpx.Request(request.method, request.url, headers=request.headers, content=content)
        future = asyncio.run_coroutine_threadsafe(self._send(copy), self._loop)
        status, headers, body = future.result()
        return httpx.Response(status, headers=headers, content=body, request=request)

    def close(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()
