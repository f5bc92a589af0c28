"""`lockgate emulator` serves a working emulator and prints where."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from lockgate.emulator import EmulatorInspector

LOCKGATE = Path(sys.executable).with_name("lockgate")


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
