"""Credential checks for the three authenticated surfaces (reference sections 0 and 11).

- Track v1/v2: HTTP Basic ``site_id:api_key``; the credential is decoded with the standard *and*
  the URL-safe base64 alphabet (go-customerio uses the latter).
- Pipelines: HTTP Basic with the write key as username and an empty password (or
  ``Bearer <write key>``, which customerio-cdp-analytics 1.1 sends for ``pk_``/``sk_`` keys).
- App API: ``Authorization: Bearer <app api key>``; ``sa_live_`` service tokens also need an
  ``X-Workspace-Id`` header equal to the workspace's ``environment_id``.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.datastructures import Headers

from lockgate.emulator.config import EmulatorConfig


def basic_credentials(headers: Headers) -> tuple[str, str] | None:
    """``(username, password)`` from a Basic header, or None when absent or undecodable."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    token = token.strip()
    padded = token + "=" * (-len(token) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(padded.encode())
            text = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            continue
        user, sep, password = text.partition(":")
        if sep:
            return user, password
    return None


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def track_ok(config: EmulatorConfig, headers: Headers) -> bool:
    creds = basic_credentials(headers)
    return creds is not None and _eq(creds[0], config.site_id) and _eq(creds[1], config.api_key)


def pipelines_ok(config: EmulatorConfig, headers: Headers) -> bool:
    # customerio-cdp-analytics 1.1 sends keys shaped `pk_us_...`/`sk_eu_...` as Bearer tokens.
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return _eq(token.strip(), config.write_key)
    creds = basic_credentials(headers)
    return creds is not None and _eq(creds[0], config.write_key)


def app_ok(config: EmulatorConfig, headers: Headers) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not _eq(token.strip(), config.app_api_key):
        return False
    if token.startswith("sa_live_"):
        return headers.get("x-workspace-id", "") == str(config.environment_id)
    return True
