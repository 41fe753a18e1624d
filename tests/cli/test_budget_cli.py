"""`tenants budget` says when a running server applies the new limit."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import run_cli as cli


def test_tenants_budget_says_when_a_running_server_applies_it(tmp_path: Path) -> None:
    """The output names the new limit and the 5 s within which a running server uses it."""
    home = tmp_path / "home"
    cli(home, "tenants", "create", "acme")
    out = cli(home, "tenants", "budget", "acme", "12.50").stdout
    assert "budget of acme: 12.5" in out and "within 5 s" in out
