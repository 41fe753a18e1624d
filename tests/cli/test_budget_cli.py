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


def test_a_small_budget_is_shown_in_plain_digits(tmp_path: Path) -> None:
    """A budget of 0.0000001 reads 0.0000001 in `tenants budget` and `tenants list`, never 1E-7."""
    home = tmp_path / "home"
    cli(home, "tenants", "create", "acme")
    said = cli(home, "tenants", "budget", "acme", "0.0000001").stdout
    listed = cli(home, "tenants", "list", "--json").stdout
    assert "budget of acme: 0.0000001 " in said
    assert '"budget": "0.0000001"' in listed
    assert "E-" not in said + listed
