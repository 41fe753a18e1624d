"""``infermeter plans`` as a user runs it: a real process per command, real SQLite under --home."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.cli.conftest import run_cli as cli


def test_create_assign_list_and_show(tmp_path: Path) -> None:
    """A plan made from flags and its next version from a file; a tenant assigned; both listed."""
    home = tmp_path / "home"
    cli(home, "tenants", "create", "acme")
    made = json.loads(
        cli(
            home, "plans", "create", "gold", "--currency", "USD", "--price", "default=0.0050", "--json"
        ).stdout
    )
    assert made["version_id"] == "gold.v1"
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    spec = tmp_path / "gold.json"
    spec.write_text(json.dumps({"name": "gold", "currency": "USD", "effective_from": later,
                                "per_1000_ru": {"default": "0.0040", "flex": "0.0015"}}))  # fmt: skip
    assert "gold.v2" in cli(home, "plans", "create", "--file", str(spec)).stdout
    assert "acme is on plan gold" in cli(home, "plans", "assign", "acme", "gold").stdout
    listed = json.loads(cli(home, "plans", "list", "--json").stdout)
    assert [v["version_id"] for v in listed["versions"]] == ["gold.v1", "gold.v2"]
    assert listed["assignments"][0]["plan"] == "gold"
    shown = json.loads(cli(home, "plans", "show", "gold").stdout)
    assert shown["versions"][1]["per_1000_ru"] == {"default": "0.0040", "flex": "0.0015"}


def test_bad_plan_commands_exit_with_the_right_code(tmp_path: Path) -> None:
    """A past effective time or an unknown plan exits 2; an unknown tenant or plan name 3."""
    home = tmp_path / "home"
    cli(home, "tenants", "create", "acme")
    past = cli(home, "plans", "create", "gold", "--currency", "USD", "--price", "default=1",
               "--effective-from", "2020-01-01T00:00:00Z", check=False)  # fmt: skip
    assert past.returncode == 2 and "retroactively" in past.stderr
    assert cli(home, "plans", "assign", "acme", "nope", check=False).returncode == 2
    cli(home, "plans", "create", "gold", "--currency", "USD", "--price", "default=1")
    assert cli(home, "plans", "assign", "nobody", "gold", check=False).returncode == 3
    assert cli(home, "plans", "show", "silver", check=False).returncode == 3
    assert cli(home, "plans", "create", "gold", "--price", "default=1", check=False).returncode == 2
