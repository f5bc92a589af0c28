"""`lockgate validate` (and `plan`, which loads the same files) refuse what Customer.io would."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from lockgate.cli import cli, main


@pytest.mark.parametrize("command", [["validate"], ["plan", "product_events"]])
def test_an_event_property_overriding_the_recipient_exits_1_naming_file_key_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    CliRunner().invoke(cli, ["init", str(tmp_path)], catch_exceptions=False)
    sync_file = tmp_path / "syncs" / "product_events.yml"
    text = sync_file.read_text()
    assert "properties: [feature_key, value]" in text
    sync_file.write_text(
        text.replace("properties: [feature_key, value]", "properties: [feature_key, recipient]")
    )
    with pytest.raises(SystemExit) as exited:
        main([*command, "--project", str(tmp_path)])
    assert exited.value.code == 1
    err = " ".join(capsys.readouterr().err.split())  # the console may wrap long lines
    assert "syncs/product_events.yml:" in err
    assert "event property `recipient` overrides the recipient of every message" in err
    assert "`allow_message_overrides: true`" in err and "(at `properties.recipient`)" in err
