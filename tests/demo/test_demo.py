"""`lockgate demo` end to end: two acts, the second sends only what changed."""

from __future__ import annotations

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
    # the summary rows: act 1 vs act 2
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
        for line in out.splitlines()
        if line.count("│") >= 4
    }
    assert rows["people new to the sync"] == ["999", "1"]
    assert rows["people changed"] == ["0", "3"]
    assert rows["events sent"] == ["3000", "2"]
    assert rows["people in Customer.io"] == ["1000", "1001"]
    assert rows["objects (companies) sent"] == ["100", "1"]
    assert rows["relationships held (person or company not synced yet)"] == ["2", "1"]
    assert rows["relationships in Customer.io"] == ["999", "1000"]
    # act 3: engagement came back through webhooks and went out again as attributes
    act3 = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in out.splitlines()
        if line.count("│") == 3
    }
    assert act3["acknowledged (durable before 200)"] == act3["reporting webhooks sent (signed)"]
    assert act3["loaded into warehouse table customerio.email"] == "600"
    assert int(act3["people with last_email_opened_at in Customer.io"]) > 0
