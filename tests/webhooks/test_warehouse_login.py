"""Webhook loads log in to Snowflake and BigQuery exactly as reading models does: the same
source block gives the same login (password, key from a file or the environment, encrypted
with a passphrase, OAuth token), database, warehouse and role, `${VAR}` references resolved
and key paths expanded and relative to the project folder.

Snowflake: fakesnow's server on loopback records the login requests, as in
tests/sources/test_snowflake_auth.py; the connector is pointed at it (Lockgate has no option
for a host, a real account's is derived from `account`). fakesnow runs none of dlt's DDL, so
the load goes no further than the login: these tests are about the login. BigQuery: what can be
seen offline, the settings both build from the source block.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from tests.sources.bigquery_api import JSONHandler, Loopback, service_account_file
from tests.sources.snowflake_login import (
    KEY,
    PASSPHRASE,
    Server,
    assert_signed_with_the_key,
    login_server,
    pem,
)
from tests.sources.warehouses import FAKESNOW_WARNING

from lockgate.emulator.webhook_sender import make_event
from lockgate.errors import ConfigError, SourceError, TransientError
from lockgate.project.loader import Project
from lockgate.sources import connect
from lockgate.webhooks.load import destination_for, load_pending
from lockgate.webhooks.spool import Spool

from .conftest import write_project

pytestmark = pytest.mark.filterwarnings(FAKESNOW_WARNING)

UNENCRYPTED = (
    serialization.Encoding.DER,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
)

SNOWFLAKE = """\
  warehouse:
    type: snowflake
    account: xy12345
    user: lockgate_svc
"""


def snowflake_project(root: Path, sources: str) -> Project:
    return write_project(root, sources=sources, webhooks="webhooks: {warehouse: warehouse}\n")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with login_server() as running:
        yield running


@pytest.fixture
def logins(server: Server, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every connection the connector opens goes to the loopback server; its login requests."""
    import snowflake.connector

    where, recorded = server
    real = snowflake.connector.connect

    def to_server(**kwargs: Any) -> Any:
        return real(**{**kwargs, **where})

    monkeypatch.setattr(snowflake.connector, "connect", to_server)
    recorded.clear()
    return recorded


def read_login(project: Project, logins: list[dict[str, Any]]) -> dict[str, Any]:
    """The login of reading a model from the project's source."""
    source = connect(project.config.sources["warehouse"], root=project.root, name="warehouse")
    source.close()
    return logins[-1]


def load_login(project: Project, logins: list[dict[str, Any]]) -> dict[str, Any]:
    """The login of loading one webhook event into the project's source."""
    event = make_event("email", "opened")
    before = len(logins)
    spool = Spool(project.spool_dir)
    try:
        spool.append_now([(event["event_id"], orjson.dumps(event))])
        with contextlib.suppress(SourceError, TransientError):  # fakesnow: no dlt DDL
            load_pending(project, spool=spool, wait=1)
    finally:
        spool.close()
    assert len(logins) > before, "the load never logged in"
    return logins[-1]


def same_login(read: dict[str, Any], load: dict[str, Any]) -> None:
    for key in ("ACCOUNT_NAME", "LOGIN_NAME", "AUTHENTICATOR"):
        assert load[key] == read[key], key
    for param in ("databaseName", "warehouse", "roleName"):
        assert load["PARAMS"].get(param) == read["PARAMS"].get(param), param


def test_a_key_from_the_environment_encrypted_and_variables_in_database_warehouse_role(
    tmp_path: Path, logins: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It logged in with no key (dlt then asked for a password) and sent `${SF_DATABASE}`
    as the database name."""
    monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY", pem(PASSPHRASE).decode())
    monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("SF_DATABASE", "ANALYTICS")
    monkeypatch.setenv("SF_WAREHOUSE", "LOAD_WH")
    monkeypatch.setenv("SF_ROLE", "LOADER")
    project = snowflake_project(
        tmp_path / "proj",
        SNOWFLAKE + "    private_key: ${SNOWFLAKE_PRIVATE_KEY}\n"
        "    private_key_passphrase: ${SNOWFLAKE_PRIVATE_KEY_PASSPHRASE}\n"
        "    database: ${SF_DATABASE}\n"
        "    warehouse: ${SF_WAREHOUSE}\n"
        "    role: ${SF_ROLE}\n",
    )
    read = read_login(project, logins)
    load = load_login(project, logins)
    assert_signed_with_the_key(load)
    assert load["PARAMS"]["databaseName"] == "ANALYTICS"
    assert load["PARAMS"]["warehouse"] == "LOAD_WH"
    assert load["PARAMS"]["roleName"] == "LOADER"
    same_login(read, load)
    # the decrypted key, which dlt's credentials hold, is written nowhere in the project folder
    der = base64.b64encode(KEY.private_bytes(*UNENCRYPTED)).decode()
    files = [path for path in project.root.rglob("*") if path.is_file()]
    assert any(".lockgate/dlt" in str(path) for path in files)
    for path in files:
        data = path.read_bytes()
        assert der[100:160].encode() not in data and PASSPHRASE.encode() not in data, path


@pytest.mark.parametrize("written", ["keys/rsa_key.p8", "~/keys/rsa_key.p8", "${KEYS}/rsa_key.p8"])
def test_a_key_file_relative_home_or_variable_path(
    tmp_path: Path, logins: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, written: str
) -> None:
    """The path went to dlt as written: relative to wherever Lockgate ran, `~` and `${KEYS}`
    not expanded."""
    home = tmp_path / "home"
    project_dir = tmp_path / "proj"
    folder = {"keys/rsa_key.p8": project_dir, "~/keys/rsa_key.p8": home}.get(written, tmp_path)
    (folder / "keys").mkdir(parents=True)
    (folder / "keys" / "rsa_key.p8").write_bytes(pem())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KEYS", str(tmp_path / "keys"))
    monkeypatch.chdir(tmp_path)  # not the project folder
    project = snowflake_project(project_dir, SNOWFLAKE + f"    private_key_path: {written}\n")
    read = read_login(project, logins)
    load = load_login(project, logins)
    assert_signed_with_the_key(load)
    same_login(read, load)


def test_an_oauth_token(
    tmp_path: Path, logins: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNOWFLAKE_TOKEN", "oauth_token_x")
    project = snowflake_project(
        tmp_path / "proj",
        SNOWFLAKE + "    authenticator: oauth\n    token: ${SNOWFLAKE_TOKEN}\n",
    )
    load = load_login(project, logins)
    assert (load["AUTHENTICATOR"], load["TOKEN"]) == ("OAUTH", "oauth_token_x")
    assert "PASSWORD" not in load
    same_login(read_login(project, logins), load)


def test_a_variable_not_set_names_the_source_and_line_printing_no_secret(
    tmp_path: Path, logins: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY", pem(PASSPHRASE).decode())
    monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", PASSPHRASE)
    project = snowflake_project(
        tmp_path / "proj",
        SNOWFLAKE + "    private_key: ${SNOWFLAKE_PRIVATE_KEY}\n"
        "    private_key_passphrase: ${SNOWFLAKE_PRIVATE_KEY_PASSPHRASE}\n"
        "    role: ${SF_ROLE}\n",
    )
    with pytest.raises(ConfigError) as caught:
        destination_for(project)
    said = str(caught.value)
    assert caught.value.location == "lockgate.yml:9"
    assert "source `warehouse`" in said and "`SF_ROLE`" in said
    assert PASSPHRASE not in said and "PRIVATE KEY-----" not in said
    assert logins == []


# ---------------------------------------------------------------------------- BigQuery


@pytest.mark.parametrize("written", ["keys/sa.json", "~/keys/sa.json", "${GCP_KEYS}/sa.json"])
def test_bigquery_loads_with_the_sources_project_key_and_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str
) -> None:
    """The key path went to dlt as written (read as the JSON itself, which it is not), and
    `project` was never passed: events went to the key's or the default project."""
    pytest.importorskip("google.cloud.bigquery")
    from lockgate.sources.bigquery import BigQuerySource

    home, project_dir = tmp_path / "home", tmp_path / "proj"
    folder = {"keys/sa.json": project_dir, "~/keys/sa.json": home}.get(written, tmp_path)
    service_account_file(folder / "keys" / "sa.json")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GCP_KEYS", str(tmp_path / "keys"))
    monkeypatch.setenv("GCP_PROJECT", "acme-analytics")
    monkeypatch.setenv("BQ_DATASET", "marts")
    monkeypatch.setenv("BQ_LOCATION", "EU")
    monkeypatch.chdir(tmp_path)
    project = write_project(
        project_dir,
        sources="  warehouse:\n    type: bigquery\n    project: ${GCP_PROJECT}\n"
        "    dataset: ${BQ_DATASET}\n    location: ${BQ_LOCATION}\n"
        f"    credentials_path: {written}\n",
        webhooks="webhooks: {warehouse: warehouse}\n",
    )
    destination, _ = destination_for(project)
    credentials = destination.config_params["credentials"]
    assert credentials.project_id == "acme-analytics"
    assert credentials.client_email == "lockgate@key-project.iam.gserviceaccount.com"
    assert destination.config_params["location"] == "EU"
    source = connect(project.config.sources["warehouse"], root=project.root, name="warehouse")
    assert isinstance(source, BigQuerySource)
    try:
        assert source.client.project == "acme-analytics"
        assert source.client.location == "EU"
        assert source.dataset == "marts"
        sa = credentials.to_native_credentials()
        assert sa.service_account_email == source.client._credentials.service_account_email
    finally:
        source.close()


def test_bigquery_a_project_variable_not_set_names_the_source_and_line(tmp_path: Path) -> None:
    """`lockgate validate` warned about `${GCP_PROJECT}`; reading and loading sent the text."""
    pytest.importorskip("google.cloud.bigquery")
    project = write_project(
        tmp_path / "proj",
        sources="  warehouse:\n    type: bigquery\n    project: ${GCP_PROJECT}\n",
        webhooks="webhooks: {warehouse: warehouse}\n",
    )
    for attempt in (
        lambda: destination_for(project),
        lambda: connect(project.config.sources["warehouse"], root=project.root, name="warehouse"),
    ):
        with pytest.raises(ConfigError) as caught:
            attempt()
        assert caught.value.location == "lockgate.yml:5"
        assert "`GCP_PROJECT`" in str(caught.value) and "source `warehouse`" in str(caught.value)


class GoogleAPI(Loopback):
    """Google's token endpoint and BigQuery's `datasets.get` on loopback: the datasets it
    holds (`project.dataset` -> location), every request it was sent, and an HTTP status to
    answer every dataset request with instead (a refusal)."""

    def __init__(self, datasets: dict[str, str]) -> None:
        self.datasets = datasets
        self.requests: list[tuple[str, str, str | None]] = []
        self.refuse: int | None = None
        api = self

        class Handler(JSONHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.requests.append(("POST", self.path, None))
                self.answer({"access_token": "t0k", "expires_in": 3600, "token_type": "Bearer"})

            def do_GET(self) -> None:
                api.requests.append(("GET", self.path, self.headers.get("Authorization")))
                parts = self.path.split("?")[0].split("/")  # /bigquery/v2/projects/P/datasets/D
                key = f"{parts[4]}.{parts[6]}"
                if api.refuse is not None:
                    self.answer(
                        {
                            "error": {
                                "code": api.refuse,
                                "message": "Access Denied: Dataset " + key,
                                "errors": [{"reason": "accessDenied"}],
                            }
                        },
                        api.refuse,
                    )
                elif key in api.datasets:
                    reference = {"projectId": parts[4], "datasetId": parts[6]}
                    self.answer({"datasetReference": reference, "location": api.datasets[key]})
                else:
                    self.answer(
                        {
                            "error": {
                                "code": 404,
                                "message": f"Not found: Dataset {key}",
                                "errors": [{"reason": "notFound"}],
                            }
                        },
                        404,
                    )

        self.serve(Handler)

    def datasets_asked(self) -> list[str]:
        return [path.split("?")[0].split("/", 4)[-1] for m, path, _ in self.requests if m == "GET"]


@pytest.fixture
def google(monkeypatch: pytest.MonkeyPatch) -> Iterator[GoogleAPI]:
    """A :class:`GoogleAPI` the BigQuery client talks to (`BIGQUERY_EMULATOR_HOST`, which the
    client library reads) with a key whose token endpoint it is; dlt's own location setting
    unset."""
    pytest.importorskip("google.cloud.bigquery")
    api = GoogleAPI({})
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", api.url)
    monkeypatch.delenv("DESTINATION__BIGQUERY__LOCATION", raising=False)
    yield api
    api.close()


def bigquery_project(
    root: Path, google: GoogleAPI, options: str = "", webhooks: str = ""
) -> Project:
    service_account_file(root / "keys" / "sa.json", token_uri=f"{google.url}/token")
    return write_project(
        root,
        sources="  warehouse:\n    type: bigquery\n    project: acme\n"
        f"    credentials_path: keys/sa.json\n{options}",
        webhooks=f"webhooks: {{warehouse: warehouse{webhooks}}}\n",
    )


def dlt_location(destination: Any) -> str:
    """The location dlt loads with: what Lockgate hands it over dlt's own setting."""
    from dlt.destinations.impl.bigquery.configuration import BigQueryClientConfiguration

    spec = BigQueryClientConfiguration()._bind_dataset_name("customerio")
    return str(destination.configuration(spec, accept_partial=True).location)


def test_bigquery_loads_where_the_webhook_dataset_is_when_no_location_is_set(
    tmp_path: Path, google: GoogleAPI
) -> None:
    """With no `location`, loads went to `US` whatever the dataset: one in the EU failed (a
    job must run where its dataset is), and a new one was made in the US, away from the
    models that join it. Now the webhook dataset's own location is used, else that of the
    source's `dataset`, else dlt's default."""
    google.datasets.update({"acme.customerio": "EU", "acme.marts": "US"})
    project = bigquery_project(tmp_path / "a", google, "    dataset: marts\n")
    destination, _ = destination_for(project)
    assert dlt_location(destination) == "EU"
    assert google.datasets_asked() == ["acme/datasets/customerio"]
    assert [auth for m, _, auth in google.requests if m == "GET"] == ["Bearer t0k"]

    # no webhook dataset yet: it is made next to the source's dataset
    google.datasets.clear()
    google.datasets["acme.marts"] = "europe-west3"
    google.requests.clear()
    project = bigquery_project(tmp_path / "b", google, "    dataset: marts\n", ", dataset: cio")
    destination, _ = destination_for(project)
    assert dlt_location(destination) == "europe-west3"
    assert google.datasets_asked() == ["acme/datasets/cio", "acme/datasets/marts"]

    # neither exists: dlt's own setting decides, by default US
    project = bigquery_project(tmp_path / "c", google)
    destination, _ = destination_for(project)
    assert "location" not in destination.config_params
    assert dlt_location(destination) == "US"


def test_bigquery_a_location_set_is_used_without_a_lookup(
    tmp_path: Path, google: GoogleAPI
) -> None:
    google.datasets["acme.customerio"] = "EU"
    project = bigquery_project(tmp_path, google, "    location: asia-northeast1\n")
    destination, _ = destination_for(project)
    assert dlt_location(destination) == "asia-northeast1"
    assert google.requests == []


def test_bigquery_a_refused_location_lookup_names_the_source_and_how_to_skip_it(
    tmp_path: Path, google: GoogleAPI
) -> None:
    google.refuse = 403
    project = bigquery_project(tmp_path, google)
    with pytest.raises(SourceError) as caught:
        destination_for(project)
    assert str(caught.value).startswith(
        "bigquery source `warehouse`: cannot look up the location of dataset `customerio` "
        "for webhook events: 403"
    )
    assert "Access Denied" in str(caught.value)
    assert "set `location` on source `warehouse`" in (caught.value.hint or "")
