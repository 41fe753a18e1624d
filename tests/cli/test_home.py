"""``--home`` is accepted before or after the subcommand; read-only commands never create one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infermeter.cli.main import main

READ_ONLY = [
    ["ledger", "verify"],
    ["usage"],
    ["invoice", "acme", "--period", "2026-01"],
    ["keys", "list"],
    ["tenants", "list"],
    ["engines", "list"],
]


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: " ".join(c[:2]))
def test_read_only_commands_on_a_home_without_a_database_fail_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """Exit 3 naming the missing database; the home is not created, nothing says 'intact'."""
    home = tmp_path / "new-home"
    assert main([*command, "--home", str(home)]) == 3
    captured = capsys.readouterr()
    assert "no infermeter database" in captured.err and "intact" not in captured.out
    assert not home.exists()


def test_home_after_the_subcommand_is_the_same_as_before_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tenant created with a trailing --home is listed with a leading one."""
    home = str(tmp_path / "h")
    assert main(["tenants", "create", "acme", "--home", home, "--json"]) == 0
    capsys.readouterr()
    assert main(["--home", home, "tenants", "list", "--json"]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)] == ["acme"]
    assert main(["ledger", "verify", "--home", home]) == 0
