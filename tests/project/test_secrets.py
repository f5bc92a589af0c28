"""Which config values are secrets: read from the fields marked `Secret`, each refused as a
literal with the file and line and how to fix it, never printed; a key file's path option
that holds the key itself is refused without printing it."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from lockgate.cli import main
from lockgate.errors import ConfigError
from lockgate.project.loader import load_project
from lockgate.project.models import SECRET_KEYS, ProjectConfig, SyncConfig, secret_fields

#: a key whose name says it may hold a secret
LOOKS_SECRET = re.compile(
    r"key|token|secret|passw|passphrase|credential|url|auth|dsn|cert|signing|private", re.I
)

#: keys that look secret and are not, each with why
NOT_SECRET = {
    "track_url": "a Customer.io host to send to; the credentials go in a header",
    "app_url": "a Customer.io host to read from; the credentials go in a header",
    "private_key_path": "the path of a key file; a key written there is refused (tests below)",
    "credentials_path": "the path of a key file; a key written there is refused (tests below)",
    "key": "an identity source's column naming its rows",
    "authenticator": "how Snowflake logs in (`oauth`); its secret is `token`",
    "primary_key": "a sync's key column",
    "webhooks": "the reporting webhooks' block; its secret is `signing_key`",
}


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every model inside it (a dict's values, a list's items, a union's members)."""
    found: list[type[BaseModel]] = []

    def leaves(annotation: object) -> list[object]:
        args = typing.get_args(annotation)
        return [annotation] if not args else [leaf for arg in args for leaf in leaves(arg)]

    def walk(model: type[BaseModel]) -> None:
        if model in found:
            return
        found.append(model)
        for info in model.model_fields.values():
            for leaf in leaves(info.annotation):
                if isinstance(leaf, type) and issubclass(leaf, BaseModel):
                    walk(leaf)

    walk(root)
    return found


def test_every_key_that_looks_secret_is_marked_secret_or_said_not_to_be() -> None:
    """A new field such as `private_key_passphrase` or `token` fails here until it is marked
    `Secret` (then it accepts only `${VAR}` and its variable's name is guarded) or listed in
    NOT_SECRET with why."""
    unmarked = [
        f"{model.__name__}.{info.alias or name}"
        for root in (ProjectConfig, SyncConfig)
        for model in _models(root)
        for name, info in model.model_fields.items()
        if LOOKS_SECRET.search(info.alias or name)
        and (info.alias or name) not in secret_fields(model)
        and (info.alias or name) not in NOT_SECRET
    ]
    assert not unmarked, f"mark these `Secret` or add them to NOT_SECRET with why: {unmarked}"
    assert set(secret_fields(SyncConfig)) == set()  # a sync file holds no secret


PROJECT = """\
name: acme
sources:
  warehouse:
    type: duckdb
    path: w.duckdb
"""

#: a literal secret in each secret key: (key, lockgate.yml, its line, the variable suggested)
LITERALS = {
    "url": (
        PROJECT.replace("type: duckdb\n    path: w.duckdb", "type: postgres\n    url: LITERAL"),
        5,
        "WAREHOUSE_URL",
    ),
    "password": (
        PROJECT.replace(
            "type: duckdb\n    path: w.duckdb",
            "type: snowflake\n    account: a\n    user: u\n    password: LITERAL",
        ),
        7,
        "SNOWFLAKE_PASSWORD",
    ),
    "private_key": (
        PROJECT.replace(
            "type: duckdb\n    path: w.duckdb",
            "type: snowflake\n    account: a\n    user: u\n    private_key: LITERAL",
        ),
        7,
        "SNOWFLAKE_PRIVATE_KEY",
    ),
    "private_key_passphrase": (
        PROJECT.replace(
            "type: duckdb\n    path: w.duckdb",
            "type: snowflake\n    account: a\n    user: u\n    private_key_path: k.p8\n"
            "    private_key_passphrase: LITERAL",
        ),
        8,
        "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE",
    ),
    "token": (
        PROJECT.replace(
            "type: duckdb\n    path: w.duckdb",
            "type: snowflake\n    account: a\n    user: u\n    authenticator: oauth\n"
            "    token: LITERAL",
        ),
        8,
        "SNOWFLAKE_TOKEN",
    ),
    "api_key": (
        PROJECT + "destinations:\n  customerio:\n    type: customerio\n    api_key: LITERAL\n",
        9,
        "CUSTOMERIO_API_KEY",
    ),
    "app_api_key": (
        PROJECT + "destinations:\n  customerio:\n    type: customerio\n    app_api_key: LITERAL\n",
        9,
        "CUSTOMERIO_APP_API_KEY",
    ),
    "signing_key": (
        PROJECT + "webhooks:\n  signing_key: LITERAL\n",
        7,
        "CUSTOMERIO_WEBHOOK_SIGNING_KEY",
    ),
    "alerts url": (PROJECT + "alerts:\n  - url: LITERAL\n", 7, "SLACK_WEBHOOK_URL"),
}

#: a secret as a user might paste it (a Postgres URL refuses one only when it holds a password)
SECRET = "postgresql://lockgate:pw_hunter2_x@db.example.com/crm"


def test_each_secret_key_has_a_literal_case() -> None:
    assert {key.split()[-1] for key in LITERALS} == SECRET_KEYS


@pytest.mark.parametrize("key", sorted(LITERALS))
def test_a_literal_secret_is_refused_where_it_is_written_and_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    yml, line, variable = LITERALS[key]
    (tmp_path / "syncs").mkdir()
    (tmp_path / "lockgate.yml").write_text(yml.replace("LITERAL", SECRET))
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert caught.value.location == f"lockgate.yml:{line}"
    field = key.split()[-1]
    assert f"`{field}` must be an environment reference like `${{{variable}}}`" in (
        caught.value.reason
    )
    with pytest.raises(SystemExit):
        main(["validate", "--project", str(tmp_path)])
    out = capsys.readouterr()
    assert f"lockgate.yml:{line}" in out.err
    for text in (str(caught.value), out.out + out.err):
        assert "hunter2" not in text, text


#: a key as a user might paste it, or export it in CI
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq_hunter2_x\n-----END PRIVATE KEY-----\n"
JSON = '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nhunter2"}'

SOURCES = {
    "private_key_path": "type: snowflake\n    account: a\n    user: u\n    private_key_path: ",
    "credentials_path": "type: bigquery\n    project: p\n    credentials_path: ",
}


@pytest.mark.parametrize(
    ("field", "key"),
    [("private_key_path", PEM), ("credentials_path", JSON)],
    ids=["snowflake-pem", "bigquery-json"],
)
def test_a_key_written_where_its_file_path_goes_is_refused_and_not_printed(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    field: str,
    key: str,
) -> None:
    """Written in lockgate.yml, `validate` refuses it at its line; exported in the variable
    the option names (`${GOOGLE_CREDENTIALS}` set to the JSON, as CI systems hold them), the
    command that connects refuses it. Neither prints it (the OS's "no such file" did)."""
    (tmp_path / "syncs").mkdir()
    source = SOURCES[field]
    written = PROJECT.replace("type: duckdb\n    path: w.duckdb", source + repr(key))
    (tmp_path / "lockgate.yml").write_text(written)
    with pytest.raises(SystemExit):
        main(["validate", "--project", str(tmp_path)])
    err = capsys.readouterr().err
    assert f"lockgate.yml:{source.count(chr(10)) + 4}: `{field}` holds a key itself" in err
    assert "hunter2" not in err

    exported = PROJECT.replace("type: duckdb\n    path: w.duckdb", source + "${LG_TEST_KEY}")
    (tmp_path / "lockgate.yml").write_text(exported)
    monkeypatch.setenv("LG_TEST_KEY", key)
    with pytest.raises(SystemExit):
        main(["sources", "inspect", "--project", str(tmp_path)])
    out = capsys.readouterr()
    said = " ".join((out.out + out.err).split())
    assert f"`{field}` (`${{LG_TEST_KEY}}`) holds a key itself" in said
    assert "give that file's path" in said and "Traceback" not in said
    assert "hunter2" not in said


def test_a_key_file_that_is_not_there_is_named_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Snowflake's key file missing was an "unexpected FileNotFoundError" (a bug, it said)."""
    (tmp_path / "syncs").mkdir()
    source = SOURCES["private_key_path"] + "keys/rsa_key.p8"
    (tmp_path / "lockgate.yml").write_text(
        PROJECT.replace("type: duckdb\n    path: w.duckdb", source)
    )
    with pytest.raises(SystemExit):
        main(["sources", "inspect", "--project", str(tmp_path)])
    said = " ".join(capsys.readouterr().err.split())
    assert "snowflake source `warehouse`: cannot read key file `keys/rsa_key.p8`" in said
    assert "unexpected" not in said
