"""The issue's "done when", as a user runs it: the commands (in process), a real server, sqlite3 edits.

1. Save a receipt from the API and verify it offline with `infermeter receipt verify`.
2. Edit one ledger row by hand and see `infermeter ledger verify` name it.
3. Issue a credit and see `infermeter invoice` change while the original record stays.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx

from tests.cli.conftest import Cli, bill_some
from tests.conftest import LiveServer


def test_a_saved_receipt_verifies_offline(fake_server: LiveServer, cli: Cli, tmp_path: Path) -> None:
    """curl the receipt and the key to files; `receipt verify` passes offline, fails when edited."""
    client = fake_server.client()
    resp = client.completions.create(model="tiny-gpt", prompt="hello", max_tokens=3)
    record_id = resp.usage.model_extra["metering"]["record_id"]
    auth = {"authorization": f"Bearer {fake_server.keys['alpha']}"}
    receipt = tmp_path / "receipt.json"
    receipt.write_bytes(httpx.get(f"{fake_server.url}/v1/receipts/{record_id}", headers=auth).content)
    key = tmp_path / "key.json"
    key.write_bytes(httpx.get(f"{fake_server.url}/v1/ledger/key").content)
    tenant_home = tmp_path / "tenant"  # the tenant's machine: no database, no keys
    ok = cli(tenant_home, "receipt", "verify", str(receipt), "--key", str(key))
    assert "valid" in ok.stdout and record_id in ok.stdout
    assert not (tenant_home / "infermeter.db").exists()
    url = f"{fake_server.url}/v1/ledger/key"
    online = cli(tenant_home, "receipt", "verify", str(receipt), "--key-url", url)
    assert "valid" in online.stdout

    key_id = json.loads(receipt.read_text())["checkpoint"]["key_id"]
    pem = Path(fake_server.service.settings.home) / "keys" / f"ledger-{key_id}.pub"
    assert "valid" in cli(tenant_home, "receipt", "verify", str(receipt), "--key", str(pem)).stdout

    forged = json.loads(receipt.read_text())
    forged["entry"]["event"]["data"]["completion_tokens"] = 1
    receipt.write_text(json.dumps(forged))
    bad = cli(tenant_home, "receipt", "verify", str(receipt), "--key", str(key), check=False)
    said = " ".join(bad.stderr.split())  # rich wraps long lines
    assert bad.returncode == 1 and "NOT valid" in said and "record was changed" in said


def test_ledger_verify_names_a_hand_edited_row_and_a_cut_tail(cli: Cli, tmp_path: Path) -> None:
    """After a sqlite3 edit `ledger verify` exits 1 naming the entry; the checkpoint names a cut tail."""
    tenant = json.loads(cli(tmp_path, "tenants", "create", "acme", "--json").stdout)
    bill_some(tmp_path, tenant["tenant_id"], 5)  # the service signs a checkpoint as it stops
    intact = cli(tmp_path, "ledger", "verify").stdout
    assert "intact" in intact and "verified" in intact
    db = sqlite3.connect(tmp_path / "infermeter.db")
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    backup = [tuple(r) for r in db.execute("SELECT * FROM ledger ORDER BY seq")]
    seq, record_id = db.execute("SELECT seq, record_id FROM ledger ORDER BY seq LIMIT 1 OFFSET 3").fetchone()
    db.execute(
        "UPDATE ledger SET payload = replace(payload, '\"prompt_tokens\":', '\"prompt_tokens\":9') "
        "WHERE seq = ?",
        (seq,),
    )
    db.commit()
    edited = cli(tmp_path, "ledger", "verify", check=False)
    assert edited.returncode == 1 and record_id in edited.stderr
    report = json.loads(cli(tmp_path, "ledger", "verify", "--json", check=False).stdout)
    assert (report["ok"], report["first_bad_seq"], report["first_bad_record_id"]) == (False, seq, record_id)

    db.execute("DELETE FROM ledger")  # put it back, then cut the last two entries and the head with them
    db.executemany(f"INSERT INTO ledger VALUES ({', '.join('?' * len(backup[0]))})", backup)
    size = len(backup)
    db.execute("DELETE FROM ledger WHERE seq >= ?", (size - 2,))
    db.execute("UPDATE ledger_head SET size = ?, head = ?", (size - 2, backup[size - 3][-1]))
    db.commit()
    db.close()
    cut = json.loads(cli(tmp_path, "ledger", "verify", "--json", check=False).stdout)
    assert (cut["ok"], cut["first_bad_seq"]) == (False, size - 2)
    assert cut["checkpoints"]["first_bad_checkpoint"] is not None and "removed" in cut["message"]
    db = sqlite3.connect(tmp_path / "infermeter.db")
    db.execute("DROP TABLE checkpoints")  # hiding the evidence is itself reported
    db.commit()
    db.close()
    dropped = json.loads(cli(tmp_path, "ledger", "verify", "--json", check=False).stdout)
    assert not dropped["ok"] and "cannot be read" in dropped["message"]


def test_a_credit_changes_the_invoice_and_the_original_stays(cli: Cli, tmp_path: Path) -> None:
    """`ledger correct --credit` lowers `invoice`'s total by the amount; the original entry is unchanged."""
    tenant = json.loads(cli(tmp_path, "tenants", "create", "acme", "--json").stdout)
    bill_some(tmp_path, tenant["tenant_id"], 3)
    period = datetime.now(UTC).strftime("%Y-%m")
    before = json.loads(cli(tmp_path, "invoice", "acme", "--period", period).stdout)
    db = sqlite3.connect(tmp_path / "infermeter.db")
    record_id, cost, payload = db.execute(
        "SELECT record_id, cost, payload FROM ledger WHERE tenant_id = ? ORDER BY seq LIMIT 1",
        (tenant["tenant_id"],),
    ).fetchone()
    amount = Decimal(cost) / 4
    done = json.loads(
        cli(
            tmp_path,
            "ledger",
            "correct",
            record_id,
            "--credit",
            str(amount),
            "--reason",
            "latency SLO missed",
            "--json",
        ).stdout
    )
    assert done["corrects"] == record_id and Decimal(done["cost"]) == -amount
    after = json.loads(cli(tmp_path, "invoice", "acme", "--period", period).stdout)
    assert Decimal(after["exact_total"]) == Decimal(before["exact_total"]) - amount
    assert [line["kind"] for line in after["lines"]].count("credit") == 1
    assert db.execute("SELECT payload FROM ledger WHERE record_id = ?", (record_id,)).fetchone()[0] == payload
    db.close()
    over = cli(tmp_path, "ledger", "correct", record_id, "--credit", cost, "--reason", "again", check=False)
    assert over.returncode == 2 and "exceeds" in " ".join(over.stderr.split())

    cli(tmp_path, "ledger", "rotate-key")
    signed = json.loads(cli(tmp_path, "ledger", "checkpoint", "--json").stdout)
    assert signed["created"]
    assert "intact" in cli(tmp_path, "ledger", "verify").stdout  # old checkpoints still verify
