"""BigQuery's REST API for one query, on loopback, for the official client.

The server answers a query job (`jobs.insert`, `jobs.get`) and its results
(`jobs.getQueryResults`) with a schema and rows written as BigQuery writes them: each cell
the text of its value (`{"v": "12.34"}`), a `TIMESTAMP` as integer microseconds (the client
asks for `useInt64Timestamp`), a `RANGE` as `[start, end)`, an `INTERVAL` in its canonical
`Y-M D H:M:S` form, a `RECORD` as `{"f": [...]}` and a `REPEATED` field as `[{"v": ...}]`.
The client's own `RowIterator.to_arrow_iterable` then builds Arrow from them, as it does
against BigQuery without the Storage Read API; Google's token endpoint is here too.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def service_account_file(
    path: Path, *, project: str = "key-project", token_uri: str = GOOGLE_TOKEN_URI
) -> Path:
    """A Google service-account key file at ``path`` (its folder made) for ``project``, whose
    token endpoint is ``token_uri``."""
    pem = _KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": project,
                "private_key_id": "0" * 40,
                "private_key": pem,
                "client_email": f"lockgate@{project}.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
    return path


class JSONHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and answers JSON."""

    def log_message(self, *args: Any) -> None:
        pass

    def answer(self, body: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Loopback:
    """A threaded HTTP server on a free loopback port (:attr:`url`), until :meth:`close`."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class BigQueryAPI(Loopback):
    """The loopback server; set :attr:`fields` (BigQuery's schema JSON) and :attr:`rows`
    (BigQuery's row JSON) before the query runs."""

    def __init__(self) -> None:
        self.fields: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        api = self

        class Handler(JSONHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.requests.append(("POST", self.path))
                if self.path.startswith("/token"):
                    self.answer({"access_token": "t0k", "expires_in": 3600, "token_type": "Bearer"})
                else:  # jobs.insert
                    self.answer(api.job())

            def do_GET(self) -> None:
                api.requests.append(("GET", self.path))
                if "/queries/" in self.path:  # jobs.getQueryResults
                    self.answer(
                        {
                            "kind": "bigquery#getQueryResultsResponse",
                            "jobReference": api.job()["jobReference"],
                            "jobComplete": True,
                            "schema": {"fields": api.fields},
                            "totalRows": str(len(api.rows)),
                            "rows": api.rows,
                        }
                    )
                else:  # jobs.get
                    self.answer(api.job())

        self.serve(Handler)

    def job(self) -> dict[str, Any]:
        table = {"projectId": "acme", "datasetId": "_anon", "tableId": "anon_result"}
        return {
            "kind": "bigquery#job",
            "id": "acme:US.job_1",
            "jobReference": {"projectId": "acme", "jobId": "job_1", "location": "US"},
            "status": {"state": "DONE"},
            "configuration": {"query": {"query": "select", "destinationTable": table}},
            "statistics": {"query": {"statementType": "SELECT", "totalBytesProcessed": "0"}},
        }

    def key_file(self, path: Path) -> Path:
        """A service-account key whose token endpoint is this server."""
        return service_account_file(path, project="acme", token_uri=f"{self.url}/token")
