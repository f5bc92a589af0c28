"""A key pair and fakesnow's server on loopback behind a recorder of the login requests it
receives: what Snowflake would check of a login, which fakesnow does not (tests of the Snowflake
source and of every writer that logs in to it)."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.sources.snowflake_loopback import serve

PASSPHRASE = "pp_hunter2_x"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

Server = tuple[dict[str, Any], list[dict[str, Any]]]
"""Connector arguments pointing at the server, and the login requests it received: each the
request's `data`, with its URL's query parameters (`databaseName`, `warehouse`, `roleName`)
under `PARAMS`."""


def pem(passphrase: str | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    return KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def fingerprint() -> str:
    der = KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()


@contextlib.contextmanager
def login_server() -> Iterator[Server]:
    """fakesnow's server on loopback, behind a recorder of the login requests it receives."""
    import fakesnow.server

    logins: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/session/v1/login-request":
            messages = []
            more = True
            while more:
                message = await receive()
                messages.append(message)
                more = message.get("more_body", False)
            body = b"".join(m.get("body", b"") for m in messages)
            if dict(scope["headers"]).get(b"content-encoding") == b"gzip":
                body = gzip.decompress(body)
            params = dict(parse_qsl(scope["query_string"].decode()))
            logins.append({**json.loads(body)["data"], "PARAMS": params})
            replay = iter(messages)

            async def receive_again() -> Any:
                return next(replay)

            return await fakesnow.server.app(scope, receive_again, send)
        return await fakesnow.server.app(scope, receive, send)

    with serve(app) as where:
        yield where, logins


def assert_signed_with_the_key(login: dict[str, Any]) -> None:
    """What Snowflake checks: a JWT for `ACCOUNT.USER` naming the registered public key's
    fingerprint, whose signature that public key verifies."""
    assert login["AUTHENTICATOR"] == "SNOWFLAKE_JWT"
    assert "PASSWORD" not in login
    claims = jwt.decode(login["TOKEN"], KEY.public_key(), algorithms=["RS256"])
    assert claims["iss"] == f"XY12345.LOCKGATE_SVC.{fingerprint()}"
    assert claims["sub"] == "XY12345.LOCKGATE_SVC"
