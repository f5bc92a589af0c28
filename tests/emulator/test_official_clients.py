"""The official Python clients drive the emulator, each from its own virtualenv.

The Track client speaks only https: it trusts the emulator's throwaway CA via
``REQUESTS_CA_BUNDLE``.

``customerio`` and ``customerio-cdp-analytics`` both ship ``customerio/__init__.py``, so they live
in ``.venv-customerio`` and ``.venv-cdp`` (``make client-venvs``). Each test runs a small script
with that interpreter against a served emulator and checks the documented outcome in its state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lockgate.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]


def _python(venv: str) -> Path:
    exe = ROOT / venv / "bin" / "python"
    if not exe.exists():
        pytest.skip(f"{venv} is missing; run `make client-venvs`")
    return exe


def _run(venv: str, script: str, *args: str, ca: Path | None = None) -> dict:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    if ca is not None:
        env["REQUESTS_CA_BUNDLE"] = str(ca)  # trust the emulator's throwaway CA
    done = subprocess.run(
        [str(_python(venv)), "-W", "ignore", "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


TRACK_SCRIPT = r"""
import json, sys
from customerio import CustomerIO, CustomerIOException
site_id, api_key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
cio = CustomerIO(site_id, api_key, host="127.0.0.1", port=port)
cio.identify(id="42", email="ann@example.com", plan="pro")
cio.identify(id="43", email="bob@example.com", city="Oslo")
for _ in range(2):
    cio.track(customer_id="42", name="signed_up", data={"n": 1}, id="01HZX3J8Y2V6N5ZK4C1Q9RT7WB")
cio.merge_customers("id", "42", "id", "43")
cio.add_device("42", "tok-1", "ios", last_used=1700000000)
cio.batch([{"type": "person", "action": "identify", "identifiers": {"id": "44"},
            "attributes": {"plan": "free"}}])
try:
    cio.track(customer_id="42", name="")
    error = None
except CustomerIOException as exc:
    error = str(exc)
print(json.dumps({"error": error, "base_url": cio.base_url}))
"""


def test_customerio_python_client_over_tls() -> None:
    emu = Emulator()
    with emu.serve(tls=True) as base:
        port = base.rsplit(":", 1)[1]
        out = _run(
            ".venv-customerio",
            TRACK_SCRIPT,
            emu.config.site_id,
            emu.config.api_key,
            port,
            ca=emu.ca_cert,
        )
    assert out["base_url"] == f"https://127.0.0.1:{port}/api/v1"
    ann = emu.person(id="42")
    assert ann is not None and ann.email == "ann@example.com"
    assert ann.attributes == {"plan": "pro", "city": "Oslo"}  # merge filled the gap
    assert emu.person(id="43") is None  # secondary gone
    assert [e.name for e in emu.events(ann)] == ["signed_up"]  # duplicate id stored once
    assert [d.id for d in ann.devices] == ["tok-1"]
    assert emu.person(id="44") is not None  # v2 batch through the client
    assert "400" in out["error"] and "event name must not be blank" in out["error"]


CDP_SCRIPT = r"""
import json, sys
from customerio import analytics
analytics.write_key, analytics.host = sys.argv[1], sys.argv[2]
analytics.sync_mode, analytics.gzip, analytics.max_retries = True, True, 0
errors = []
analytics.on_error = lambda e, batch: errors.append(str(e))
analytics.identify("u1", {"email": "carol@example.com", "plan": "pro"})
analytics.track("u1", "Clicked", {"button": "buy"})
analytics.group("u1", "acme", {"name": "Acme", "relationshipAttributes": {"role": "admin"}})
analytics.page("u1", name="Home", properties={"url": "https://example.com/"})
analytics.flush()
print(json.dumps({"errors": errors}))
"""


def test_cdp_analytics_client_with_gzip() -> None:
    emu = Emulator()
    with emu.serve() as base:
        out = _run(".venv-cdp", CDP_SCRIPT, emu.config.write_key, base)
    assert out["errors"] == []
    carol = emu.person(id="u1")
    assert carol is not None and carol.email == "carol@example.com"
    assert carol.attributes == {"plan": "pro"}
    assert sorted((e.type, e.name) for e in emu.events(carol)) == [
        ("event", "Clicked"),
        ("page", "Home"),
    ]
    assert [(o.object_id, o.attributes) for o in emu.objects()] == [("acme", {"name": "Acme"})]
    assert emu.relationships()[0].attributes == {"role": "admin"}
    assert all(r.route == "/v1/batch" for r in emu.request_log())
    assert sys.executable  # the tests themselves run in the project venv
