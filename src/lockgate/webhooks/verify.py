"""Verify Customer.io reporting-webhook signatures (reference §5.2).

Customer.io signs ``"v0:" + X-CIO-Timestamp + ":" + raw body`` with HMAC-SHA256 and the
webhook's signing key, and sends the lowercase hex digest as ``X-CIO-Signature``. The raw
bytes are signed, so verification must run before the body is parsed. Customer.io publishes
no replay window; Lockgate rejects timestamps further than ``replay_window`` seconds from now.

Example::

    verify(key, headers.get("x-cio-timestamp"), headers.get("x-cio-signature"), body)
    sig = sign(key, 1613063089, body)   # the sender side (emulator, tests)
"""

from __future__ import annotations

import hashlib
import hmac
import time

from lockgate.errors import ConfigError
from lockgate.project.models import WebhooksConfig, resolve_env
from lockgate.webhooks.errors import HTTPError


def signing_key(config: WebhooksConfig) -> bytes:
    """The reporting webhook's signing key from the environment (never printed).

    Whitespace around it is dropped: a key kept in a secret file often ends in a newline, the
    key Customer.io shows has none, and with it no genuine webhook would verify.
    """
    key = (resolve_env(config.signing_key, field="webhooks.signing_key", at=config) or "").strip()
    if not key:
        raise ConfigError(
            "the webhook signing key is empty",
            hint="export CUSTOMERIO_WEBHOOK_SIGNING_KEY with the key from the reporting "
            "webhook's settings page in Customer.io",
        )
    return key.encode()


SIGNATURE_HEADER = "x-cio-signature"
TIMESTAMP_HEADER = "x-cio-timestamp"

_HINT_KEY = (
    "check that CUSTOMERIO_WEBHOOK_SIGNING_KEY matches the signing key on the reporting "
    "webhook's settings page in Customer.io"
)


def sign(key: bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-CIO-Signature`` value for a body sent at ``timestamp``."""
    message = b"v0:" + str(timestamp).encode() + b":" + body
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def verify(
    key: bytes,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    replay_window: int = 300,
    now: float | None = None,
) -> int:
    """Check the signature headers of one request; return the timestamp.

    Raises :class:`HTTPError` 401 with a reason when a header is missing, the timestamp is
    not an integer or outside the replay window, or the signature does not match. The key is
    never part of a message.
    """
    if not timestamp:
        raise HTTPError(
            401,
            "missing `X-CIO-Timestamp` header",
            hint="Customer.io reporting webhooks send it; sign requests as in §5.2",
        )
    if not signature:
        raise HTTPError(
            401,
            "missing `X-CIO-Signature` header",
            hint="Customer.io reporting webhooks send it; sign requests as in §5.2",
        )
    try:
        ts = int(timestamp)
    except ValueError:
        raise HTTPError(
            401,
            f"`X-CIO-Timestamp` `{timestamp[:40]}` is not an integer",
            hint="send unix seconds",
        ) from None
    expected = sign(key, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        raise HTTPError(401, "`X-CIO-Signature` does not match the body", hint=_HINT_KEY)
    skew = (time.time() if now is None else now) - ts
    if abs(skew) > replay_window:
        raise HTTPError(
            401,
            f"`X-CIO-Timestamp` is {int(abs(skew))} s {'old' if skew > 0 else 'in the future'}; "
            f"the replay window is {replay_window} s",
            hint="check the sender's clock, or raise `webhooks.replay_window` in lockgate.yml",
        )
    return ts
