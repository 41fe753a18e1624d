"""``infermeter commitments`` as a user runs it: each command through main(), real SQLite."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import run_cli as cli


def test_add_and_list_a_commitment(tmp_path: Path) -> None:
    """A commitment added from flags is listed; a past start exits 2 naming start_at."""
    home = tmp_path / "home"
    cli(home, "tenants", "create", "acme")
    made = json.loads(cli(home, "commitments", "add", "acme", "--ru-per-month", "1000000",
                          "--price", "0.0015", "--json").stdout)  # fmt: skip
    assert (made["ru_per_month"], made["per_1000_ru"]) == ("1000000", "0.0015")
    listed = json.loads(cli(home, "commitments", "list", "--json").stdout)["data"]
    assert [c["tenant_id"] for c in listed] == [made["tenant_id"]]
    past = cli(home, "commitments", "add", "acme", "--ru-per-month", "1", "--price", "1",
               "--start-at", "2020-01-01T00:00:00Z", check=False)  # fmt: skip
    assert past.returncode == 2 and "start_at" in past.stderr
    assert cli(home, "commitments", "add", "nobody", "--ru-per-month", "1", "--price", "1",
               check=False).returncode == 3  # fmt: skip
