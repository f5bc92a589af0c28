"""`lockgate emulator` serves a working emulator and prints where."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lockgate.emulator import EmulatorInspector
from lockgate.emulator.config import DEFAULT_API_KEY, DEFAULT_SITE_ID
from lockgate.emulator.server import bind

LOCKGATE = Path(sys.executable).with_name("lockgate")


def test_the_printed_address_takes_connections_before_the_server_loop_runs() -> None:
    """`lockgate emulator` prints its address once the socket is bound, before uvicorn's loop
    starts: a caller that connects at once (a script reading the first line) must be queued,
    not refused."""
    sock = bind("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname(), timeout=5):
            pass
    finally:
        sock.close()


def test_cli_serves_with_env_credentials(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LOCKGATE_EMULATOR_API_KEY": "from-env"}
    proc = subprocess.Popen(
        [str(LOCKGATE), "emulator", "--port", "0", "--site-id", "s1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        base = first.split(" on ", 1)[1].strip()
        r = httpx.put(f"{base}/api/v1/customers/7", json={"plan": "pro"}, auth=("s1", "from-env"))
        assert r.status_code == 200
        assert httpx.put(f"{base}/api/v1/customers/7", json={}, auth=("s1", "x")).status_code == 401
        with EmulatorInspector(base) as remote:
            assert remote.person(id="7").attributes == {"plan": "pro"}  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_applies_every_accepted_v2_batch_in_order() -> None:
    """The standalone emulator keeps its store out of the garbage collector's scans
    (Emulator.own_process); batches applied in the background, at a read, after a reset and
    with deletes in between must still all be there, in order."""
    proc = subprocess.Popen(
        [str(LOCKGATE), "emulator", "--port", "0", "--rate-limit", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def batch(ops: list[dict[str, object]]) -> None:
        r = client.post("/api/v2/batch", json={"batch": ops})
        assert (r.status_code, r.json()) == (200, {})

    def ident(i: int, **attrs: object) -> dict[str, object]:
        attrs = {"email": f"u{i}@x.com", "n": i, **attrs}
        ids = {"id": str(i)}
        return {"type": "person", "action": "identify", "identifiers": ids, "attributes": attrs}

    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().split(" on ", 1)[1].strip()
        with (
            httpx.Client(base_url=base, auth=(DEFAULT_SITE_ID, DEFAULT_API_KEY)) as client,
            EmulatorInspector(base) as remote,
        ):
            batch([ident(i) for i in range(300)])
            time.sleep(0.5)  # applied in the background meanwhile
            batch([ident(i) for i in range(300, 600)])
            gone = {"type": "person", "action": "delete", "identifiers": {"id": "5"}}
            batch([ident(7, plan="pro"), gone, ident(5, plan="back")])
            assert remote.stats.records_ingested == 603
            people = {p.id: p.attributes for p in remote.people()}
            assert len(people) == 600
            assert people["7"] == {"n": 7, "plan": "pro"} and people["5"] == {
                "n": 5,
                "plan": "back",
            }
            remote.reset()
            batch([ident(1)])
            assert [p.id for p in remote.people()] == ["1"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_port_out_of_range_or_a_negative_latency_is_refused_as_the_option_it_is() -> None:
    # `--port 99999` was "unexpected OverflowError ... this is a bug in Lockgate"; a negative
    # `--latency-ms` or `--rate-limit` started an emulator that did not do what it said
    from click.testing import CliRunner

    from lockgate.cli import cli

    for args, said in (
        (["--port", "99999"], "'--port': 99999 is not in the range 0<=x<=65535"),
        (["--latency-ms", "-5"], "'--latency-ms': -5 is not in the range x>=0"),
        (["--rate-limit", "-1"], "'--rate-limit': -1.0 is not in the range x>=0"),
    ):
        result = CliRunner().invoke(cli, ["emulator", *args])
        assert result.exit_code == 2, result.output
        assert said in " ".join(result.output.split())
