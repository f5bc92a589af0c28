"""One JSON error body for every Lockgate HTTP surface (webhooks now, the collector later).

Every 4xx/5xx answer has the same shape, so a sender's logs read the same everywhere::

    {"error": {"status": 401, "reason": "signature does not match", "hint": "..."}}

Example::

    raise HTTPError(400, "body is not valid JSON", hint="send one JSON object per request")

and in a Starlette app, ``exception_handlers={HTTPError: http_error_response}``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response


class HTTPError(Exception):
    """An HTTP error answer: a status code, a reason and a hint for the sender."""

    def __init__(self, status: int, reason: str, *, hint: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.hint = hint

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"status", "reason", "hint"}}``."""
        return {"error": {"status": self.status, "reason": self.reason, "hint": self.hint}}


def error_response(status: int, reason: str, *, hint: str | None = None) -> Response:
    """A JSON response in the shared error shape."""
    return http_response(HTTPError(status, reason, hint=hint))


def http_response(error: HTTPError) -> Response:
    """Render an :class:`HTTPError` as a JSON response."""
    return Response(
        orjson.dumps(error.body()), status_code=error.status, media_type="application/json"
    )


async def http_error_response(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for :class:`HTTPError`."""
    assert isinstance(exc, HTTPError)
    return http_response(exc)
