"""The commands' behaviour, in process (``main([...])``), on real SQLite under --home; exit codes
and the ledger check also as real processes."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tests.cli.conftest import Cli, bill_some, run_process


def test_tenants_create_json_prints_id_and_key(cli: Cli, tmp_path: Path) -> None:
    """`tenants create NAME --json` prints the tenant id and a new API key."""
    out = json.loads(cli(tmp_path, "tenants", "create", "acme", "--json").stdout)
    assert out["tenant_id"].startswith("ten_") and out["api_key"].startswith("im-")
    again = cli(tmp_path, "tenants", "create", "acme", check=False)
    assert again.returncode == 2 and "exists already" in again.stderr


def test_keys_create_and_revoke(cli: Cli, tmp_path: Path) -> None:
    """Keys are created for a tenant and revoked by id; unknown tenants exit 3."""
    cli(tmp_path, "tenants", "create", "acme")
    key = json.loads(cli(tmp_path, "keys", "create", "--tenant", "acme", "--json").stdout)
    cli(tmp_path, "keys", "revoke", key["key_id"])
    listing = json.loads(cli(tmp_path, "keys", "list", "--tenant", "acme", "--json").stdout)
    revoked = {k["key_id"]: k["revoked_at"] for k in listing}
    assert revoked[key["key_id"]] is not None and len(revoked) == 2
    missing = cli(tmp_path, "keys", "create", "--tenant", "nobody", check=False)
    assert missing.returncode == 3 and "nobody" in missing.stderr


def test_invoice_totals_equal_the_ledger(cli: Cli, tmp_path: Path) -> None:
    """The invoice's exact total equals Σ cost of the tenant's ledger records, to the last digit."""
    tenant = json.loads(cli(tmp_path, "tenants", "create", "acme", "--json").stdout)
    svc = bill_some(tmp_path, tenant["tenant_id"], 6)
    period = datetime.now(UTC).strftime("%Y-%m")
    inv = json.loads(cli(tmp_path, "invoice", "acme", "--period", period, "--format", "json").stdout)
    from infermeter.billing.sqlite_store import SqliteStore

    store = SqliteStore(tmp_path / "infermeter.db")
    records = [r for _, r in store.list_records(tenant["tenant_id"], limit=1000)]
    store.close()
    assert len(records) == 6
    assert Decimal(inv["exact_total"]) == sum((r.cost for r in records), start=Decimal(0))
    assert {(line["model"], line["service_tier"]) for line in inv["lines"]} == {
        ("tiny-gpt", "default"),
        ("tiny-gpt", "flex"),
    }
    csv_out = cli(tmp_path, "invoice", "acme", "--period", period, "--format", "csv").stdout
    assert "tiny-gpt" in csv_out and "flex" in csv_out
    usage = json.loads(cli(tmp_path, "usage", "--tenant", "acme", "--group-by", "tier", "--json").stdout)
    assert sum(row["requests"] for row in usage) == 6
    _ = svc


def test_bad_period_exits_2(cli: Cli, tmp_path: Path) -> None:
    """A period that is not YYYY-MM is refused with exit code 2 (a real process) and the format."""
    cli(tmp_path, "tenants", "create", "acme")
    proc = run_process(tmp_path, "invoice", "acme", "--period", "November")
    assert proc.returncode == 2 and "YYYY-MM" in proc.stderr


@pytest.mark.parametrize("column", ["cost", "payload"])
def test_ledger_verify_names_an_edited_row(cli: Cli, tmp_path: Path, column: str) -> None:
    """`ledger verify` passes, then fails naming the entry after one row is edited with sqlite3."""
    tenant = json.loads(cli(tmp_path, "tenants", "create", "acme", "--json").stdout)
    bill_some(tmp_path, tenant["tenant_id"], 4)
    assert "intact" in cli(tmp_path, "ledger", "verify").stdout
    db = sqlite3.connect(tmp_path / "infermeter.db")
    triggers = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
    for name in triggers:  # what a person with the sqlite3 shell would do first
        db.execute(f"DROP TRIGGER {name}")
    seq, record_id = db.execute(
        "SELECT seq, record_id FROM ledger WHERE tenant_id = ? ORDER BY seq LIMIT 1 OFFSET 2",
        (tenant["tenant_id"],),
    ).fetchone()
    if column == "cost":
        db.execute("UPDATE ledger SET cost = '0' WHERE seq = ?", (seq,))
    else:
        db.execute(
            "UPDATE ledger SET payload = replace(payload, '\"completion_tokens\":', "
            "'\"completion_tokens\":1') WHERE seq = ?",
            (seq,),
        )
    db.commit()
    db.close()
    proc = run_process(tmp_path, "ledger", "verify")  # the exit code a script sees
    assert proc.returncode == 1
    assert record_id in proc.stderr or str(seq) in proc.stderr
    report = json.loads(cli(tmp_path, "ledger", "verify", "--json", check=False).stdout)
    assert report["ok"] is False and report["first_bad_seq"] == seq


def test_the_start_up_banner_names_every_model_served() -> None:
    """`serve`'s banner lists every model it serves, not only the built-in one."""
    from infermeter.cli.serving import banner

    url = "http://127.0.0.1:8000"
    assert "(models smollm2, tiny-gpt);" in banner(url, ["smollm2", "tiny-gpt"])
    assert "(model tiny-gpt);" in banner(url, ["tiny-gpt"])
