"""Snowflake key-pair authentication as data engineers set it up (dbt-snowflake's options): a
key file or the key itself from the environment, encrypted with a passphrase or not.

fakesnow does not check credentials, so these tests check what Snowflake would: the login
request that reaches the (fake) server over loopback carries a JWT signed with the generated
key, naming its public key's fingerprint. A key that cannot be used is a clear error naming
the source, printing neither the key nor the passphrase.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from tests.sources.snowflake_login import (
    KEY,
    PASSPHRASE,
    Server,
    assert_signed_with_the_key,
    login_server,
    pem,
)
from tests.sources.warehouses import FAKESNOW_WARNING

from lockgate.cli import main
from lockgate.errors import ConfigError
from lockgate.project.loader import load_project
from lockgate.project.models import SnowflakeSourceConfig
from lockgate.sources import SnowflakeSource

pytestmark = pytest.mark.filterwarnings(FAKESNOW_WARNING)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with login_server() as running:
        yield running


def login_with(server: Server, config: dict[str, Any], root: Path) -> dict[str, Any]:
    """Connect as Lockgate would with ``config`` (pointed at the loopback server), read a row,
    and return the login request the server received."""
    where, logins = server
    model = SnowflakeSourceConfig.model_validate(
        {"account": "xy12345", "user": "lockgate_svc", **config}
    )
    args = SnowflakeSource.connect_args(model, root=root, name="warehouse")
    source = SnowflakeSource(name="warehouse", **args, **where)
    try:
        assert source.read("select 1 as one").read_all().to_pylist() == [{"one": 1}]
    finally:
        source.close()
    return logins[-1]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_key_file_logs_in_with_a_jwt_signed_by_that_key(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "rsa_key.p8").write_bytes(pem(PASSPHRASE if encrypted else None))
    config: dict[str, Any] = {"private_key_path": "keys/rsa_key.p8"}
    if encrypted:
        monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", PASSPHRASE)
        config["private_key_passphrase"] = "${SNOWFLAKE_PRIVATE_KEY_PASSPHRASE}"
    assert_signed_with_the_key(login_with(server, config, tmp_path))


@pytest.mark.parametrize(
    "held",
    ["pem", "encrypted pem", "pem one line", "base64 der"],
)
def test_a_key_from_the_environment_logs_in_with_a_jwt_signed_by_that_key(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    """`private_key: ${SNOWFLAKE_PRIVATE_KEY}`, as CI systems hold keys: the PEM text, its
    line breaks written `\\n` on one line, or base64 DER."""
    config: dict[str, Any] = {"private_key": "${SNOWFLAKE_PRIVATE_KEY}"}
    value = pem(PASSPHRASE if held == "encrypted pem" else None).decode()
    if held == "pem one line":
        value = value.replace("\n", "\\n")
    if held == "base64 der":
        der = KEY.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        value = base64.b64encode(der).decode()
    if held == "encrypted pem":
        monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", PASSPHRASE)
        config["private_key_passphrase"] = "${SNOWFLAKE_PRIVATE_KEY_PASSPHRASE}"
    monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY", value)
    assert_signed_with_the_key(login_with(server, config, tmp_path))


def test_a_password_still_logs_in_with_the_password(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "pw_x")
    login = login_with(server, {"password": "${SNOWFLAKE_PASSWORD}"}, tmp_path)
    assert login["PASSWORD"] == "pw_x"
    assert "TOKEN" not in login


def test_an_oauth_token_logs_in_with_the_token(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNOWFLAKE_TOKEN", "oauth_token_x")
    config = {"authenticator": "oauth", "token": "${SNOWFLAKE_TOKEN}"}
    login = login_with(server, config, tmp_path)
    assert (login["AUTHENTICATOR"], login["TOKEN"]) == ("OAUTH", "oauth_token_x")
    assert "PASSWORD" not in login


# --------------------------------------------------------------------------- errors

PROJECT = """\
name: acme
sources:
  warehouse:
    type: snowflake
    account: xy12345
    user: lockgate_svc
"""


def run(project: Path, *args: str) -> None:
    """Run a CLI command that fails (its output is in capsys)."""
    with pytest.raises(SystemExit):
        main([*args, "--project", str(project)])


@pytest.mark.parametrize(
    ("case", "said"),
    [
        (
            "file, no passphrase",
            "snowflake source `warehouse`: the key in `private_key_path` (`rsa_key.p8`) is "
            "encrypted and `private_key_passphrase` is not set",
        ),
        (
            "file, wrong passphrase",
            "snowflake source `warehouse`: `private_key_passphrase` does not decrypt the key in "
            "`private_key_path` (`rsa_key.p8`) (wrong passphrase; neither is shown)",
        ),
        (
            "env, no passphrase",
            "snowflake source `warehouse`: the key in `private_key` is encrypted and "
            "`private_key_passphrase` is not set",
        ),
        (
            "env, wrong passphrase",
            "snowflake source `warehouse`: `private_key_passphrase` does not decrypt the key in "
            "`private_key` (wrong passphrase; neither is shown)",
        ),
        (
            "env, not a key",
            "snowflake source `warehouse`: `private_key` does not hold a private key Lockgate "
            "can read (not shown)",
        ),
    ],
)
def test_an_encrypted_key_without_its_passphrase_is_a_clear_error_printing_neither(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    said: str,
) -> None:
    """It was "unexpected TypeError: Password was not given but private key is encrypted",
    called a bug in Lockgate; and there was no way to give the passphrase."""
    (tmp_path / "syncs").mkdir()
    key = pem(PASSPHRASE)
    if case.startswith("file"):
        (tmp_path / "rsa_key.p8").write_bytes(key)
        yml = PROJECT + "    private_key_path: rsa_key.p8\n"
    else:
        monkeypatch.setenv(
            "SNOWFLAKE_PRIVATE_KEY", "hunter2 not a key" if "not a key" in case else key.decode()
        )
        yml = PROJECT + "    private_key: ${SNOWFLAKE_PRIVATE_KEY}\n"
    if "wrong" in case:
        monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", "wrong_hunter2")
        yml += "    private_key_passphrase: ${SNOWFLAKE_PRIVATE_KEY_PASSPHRASE}\n"
    (tmp_path / "lockgate.yml").write_text(yml)
    run(tmp_path, "sources", "inspect")
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert said in text
    assert "unexpected" not in text and "Traceback" not in text
    assert "hunter2" not in text
    body = key.decode().splitlines()[1]
    assert body not in text


def test_a_passphrase_for_a_key_that_is_not_encrypted_is_said(tmp_path: Path) -> None:
    """Likely the wrong key file: said rather than ignored."""
    (tmp_path / "rsa_key.p8").write_bytes(pem())
    model = SnowflakeSourceConfig.model_validate(
        {
            "account": "a",
            "user": "u",
            "private_key_path": "rsa_key.p8",
            "private_key_passphrase": "${LG_TEST_PASSPHRASE}",
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LG_TEST_PASSPHRASE", PASSPHRASE)
        with pytest.raises(ConfigError) as caught:
            SnowflakeSource.connect_args(model, root=tmp_path, name="warehouse")
    assert "`private_key_passphrase` is set but the key in `private_key_path`" in str(caught.value)
    assert PASSPHRASE not in str(caught.value)


@pytest.mark.parametrize(
    ("lines", "line", "said"),
    [
        (
            "    password: ${SNOWFLAKE_PASSWORD}\n    private_key: ${SNOWFLAKE_PRIVATE_KEY}\n",
            8,
            "both `password` and `private_key` are set",
        ),
        (
            "    private_key: ${SNOWFLAKE_PRIVATE_KEY}\n    private_key_path: rsa_key.p8\n",
            8,
            "both `private_key` and `private_key_path` are set",
        ),
        (
            "    password: ${SNOWFLAKE_PASSWORD}\n"
            "    private_key_passphrase: ${SNOWFLAKE_PRIVATE_KEY_PASSPHRASE}\n",
            8,
            "`private_key_passphrase` decrypts a key, but neither `private_key` nor "
            "`private_key_path` is set",
        ),
        (
            "    authenticator: oauth\n    password: ${SNOWFLAKE_PASSWORD}\n",
            8,
            "`authenticator: oauth` logs in with `token`, not `password`",
        ),
        (
            "    authenticator: oauth\n",
            7,
            "`authenticator: oauth` needs `token: ${SNOWFLAKE_TOKEN}`",
        ),
        (
            "    private_key_path: rsa_key.p8\n    token: ${SNOWFLAKE_TOKEN}\n",
            8,
            "`token` is an OAuth access token: set `authenticator: oauth`",
        ),
    ],
    ids=[
        "password and key",
        "key and key file",
        "passphrase without a key",
        "oauth and password",
        "oauth without a token",
        "token without oauth",
    ],
)
def test_two_ways_to_log_in_are_refused_at_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: str, line: int, said: str
) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text(PROJECT + lines)
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert caught.value.location == f"lockgate.yml:{line}"
    assert said in caught.value.reason
    run(tmp_path, "validate")
    assert f"lockgate.yml:{line}: {said}" in " ".join(capsys.readouterr().err.split())
