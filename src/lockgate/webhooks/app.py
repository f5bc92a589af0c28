"""The Starlette app that receives Customer.io reporting webhooks.

``POST /webhooks/customerio`` checks the signature on the raw body (401 when it is wrong,
stale or missing), stores the raw body in the durable spool, and answers ``200 {"ok": true}``
only after the fsync that covers it. A signed body whose envelope is not what the spec
describes (not JSON, a list, ``event_id`` or ``timestamp`` missing or of another type) is
stored all the same, keyed by a hash of its bytes (never by an ``event_id`` it carries), and
answered ``200`` with a warning: it loads into the ``other`` table as received. Refusing it
would not make Customer.io send it differently, and after a 400 Customer.io holds back every
later event of the webhook for up to 7 days, then drops the refused one. Loading into the
warehouse happens later, off the request path, so answers stay far under Customer.io's
4-second timeout. Every error body has the shared shape from ``errors.py``.

The app is a plain ASGI app, so a larger server can mount it::

    app = create_app(spool=Spool(path), signing_key=b"...")
    Mount("/", app=app)          # serves /webhooks/customerio and /webhooks/health
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.webhooks.errors import HTTPError, error_response, http_error_response
from lockgate.webhooks.schemas import MAX_BODY, spool_key
from lockgate.webhooks.spool import Spool
from lockgate.webhooks.verify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

PATH = "/webhooks/customerio"
_TOO_LARGE = (
    "reporting webhooks this large are not expected (a `sent` event with Body Content is the "
    "largest kind); check what sends to this URL"
)
OK = b'{"ok":true}'

log = logging.getLogger("lockgate.webhooks")


def create_app(
    *,
    spool: Spool,
    signing_key: bytes,
    replay_window: int = 300,
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> Starlette:
    """Build the receiver app around a spool and a signing key.

    ``on_startup``/``on_shutdown`` let ``serve`` start and stop its background loader with the
    app's lifespan.
    """
    if not signing_key:
        raise ValueError("the webhook signing key is empty")

    async def receive(request: Request) -> Response:
        body = await _read_body(request)
        headers = request.headers
        verify(
            signing_key,
            headers.get(TIMESTAMP_HEADER),
            headers.get(SIGNATURE_HEADER),
            body,
            replay_window=replay_window,
        )
        # the signature proves Customer.io sent it: a body it cannot be made to change is kept,
        # never refused (a 400 would hold every later event of the webhook for 7 days)
        key, problem = spool_key(body)
        if problem is not None:
            log.warning("stored a signed webhook body that is not a valid event (%s)", problem)
        try:
            await spool.append(key, body)
        except Exception as exc:  # disk full, spool unreadable: let Customer.io retry
            log.error("spool write failed: %s", exc)
            return error_response(
                503,
                "the event could not be stored durably",
                hint="Customer.io retries; check the disk and the spool folder",
            )
        if problem is not None:
            return Response(
                orjson.dumps({"ok": True, "stored_as": "other", "warning": problem}),
                media_type="application/json",
            )
        return Response(OK, media_type="application/json")

    async def health(request: Request) -> Response:
        stats = spool.stats()
        return Response(
            f'{{"ok":true,"stored":{stats.total},"unloaded":{stats.unloaded},'
            f'"rejected":{stats.rejected}}}'.encode(),
            media_type="application/json",
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        spool.start()
        if on_startup is not None:
            on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                on_shutdown()
            spool.stop()

    return Starlette(
        routes=[
            Route(PATH, receive, methods=["POST"]),
            Route("/webhooks/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPError: http_error_response},
        lifespan=lifespan,
    )


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise HTTPError(413, f"body is larger than {MAX_BODY} bytes", hint=_TOO_LARGE)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPError(413, f"body is larger than {MAX_BODY} bytes", hint=_TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)
