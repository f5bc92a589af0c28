"""`lockgate demo` end to end: two acts, the second sends only what changed."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from lockgate.cli import cli


def test_demo_runs_twice_and_the_second_act_sends_only_changes(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["demo", "--dir", str(tmp_path / "demo")], catch_exceptions=False
    )
    assert result.exit_code == 0
    out = result.output
    assert "What went out, act by act" in out
    assert "`42` appears 2 times" in out
    assert "is in the future" in out
    # the demo gives the syncs the emulator's App API: new people's emails are checked and
    # people given a new email are read back, so no sync warns that it could not
    assert "not checked" not in out and "not read back" not in out
    # (the tables' columns are as wide as their longest label)
    assert re.search(r"new people's emails checked +│ +999 │", out)
    assert re.search(r"people given a new email, read back +│ +1 │", out)
    # the summary rows: act 1 vs act 2
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
        for line in out.splitlines()
        if line.count("│") >= 4
    }
    # 3 upgrades, 2 leads now on their merged person, and user 9's new email (profile, Stripe)
    assert rows["people changed"][1] == "7"
    assert rows["events sent"] == ["3,000", "2"]
    assert rows["objects (companies) sent"] == ["100", "1"]
    assert rows["relationships in Customer.io"] == ["1,000", "1,001"]
    # identity: Stripe rows land on the app's people; act 2 links two work addresses that
    # Customer.io held as separate leads, and Lockgate merges them (1000 users + 3 leads,
    # then + 1 new person - 2 merged)
    assert rows["Stripe rows put on the app's person (no duplicate profile)"][0] == "336"
    assert rows["duplicates merged in Customer.io (total)"] == ["0", "2"]
    assert rows["people in Customer.io"] == ["1,003", "1,002"]
    # act 3: engagement came back through webhooks and went out again as attributes
    act3 = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in out.splitlines()
        if line.count("│") == 3
    }
    assert act3["acknowledged (durable before 200)"] == act3["reporting webhooks sent (signed)"]
    assert act3["loaded into warehouse table customerio.email"] == "600"
    assert int(act3["people with last_email_opened_at in Customer.io"]) > 0
