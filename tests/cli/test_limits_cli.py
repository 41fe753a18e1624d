"""``infermeter limits`` as a user runs it: in process, real SQLite under --home."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import run_cli as cli


def test_set_reports_the_limits_in_words_and_list_gives_them_as_json(tmp_path: Path) -> None:
    """`limits set` says what it set in words (no Python repr); `limits list` prints JSON."""
    home = tmp_path / "home"
    cli(home, "tenants", "create", "acme")
    said = cli(home, "limits", "set", "acme", "--rpm", "3", "--ru-per-min", "50").stdout
    assert said.strip().endswith(": 3 requests, 50 RU per minute")
    assert "None" not in said and "{" not in said
    listed = json.loads(cli(home, "limits", "list").stdout)
    assert list(listed.values()) == [{"requests_per_min": 3, "tokens_per_min": None, "ru_per_min": "50"}]
    assert cli(home, "limits", "set", "acme").stdout.strip().endswith(": no limits")
