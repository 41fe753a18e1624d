"""The service and the CLI on PostgreSQL (--db / INFERMETER_DB): what they bill, PostgreSQL holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from infermeter.billing.pg_store import PgStore
from infermeter.config import load_settings
from tests.conftest import fake_service, run_server


def cli(home: Path, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "infermeter.cli.main", "--home", str(home), "--db", db, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stdout}\n{proc.stderr}"
    return proc


def test_the_openai_client_is_billed_into_postgresql(tmp_path: Path, pg_url: str) -> None:
    """Requests through the server on --db postgresql://… land in PostgreSQL, chained and verified."""
    service = fake_service(tmp_path / "home", db=pg_url)
    assert isinstance(service.store, PgStore)
    gen = run_server(service)
    live = next(gen)
    try:
        client = live.client("alpha")
        for i in range(3):
            client.chat.completions.create(
                model="tiny-gpt", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=4
            )
        receipt_of = live.tenant_ids["alpha"]
    finally:
        for _ in gen:
            pass
        service.stop()
    with PgStore(pg_url) as store:
        records = [r for _, r in store.list_records(receipt_of, limit=100)]
        assert len(records) == 3 and store.verify().ok
        assert store.spent(receipt_of) == sum((r.cost for r in records), Decimal(0))


def test_cli_commands_take_db(tmp_path: Path, pg_url: str) -> None:
    """tenants, keys, usage, ledger checkpoint and ledger verify all run against --db."""
    home = tmp_path / "home"
    made = json.loads(cli(home, pg_url, "tenants", "create", "acme", "--json").stdout)
    assert [t["name"] for t in json.loads(cli(home, pg_url, "tenants", "list", "--json").stdout)] == ["acme"]
    keys = json.loads(cli(home, pg_url, "keys", "list", "--json").stdout)
    assert [k["key_id"] for k in keys] == [made["key_id"]]
    with PgStore(pg_url) as store:  # the tenant is in PostgreSQL, not in a SQLite file
        assert store.find_tenant("acme") is not None
    assert not (home / "infermeter.db").exists()
    cp = json.loads(cli(home, pg_url, "ledger", "checkpoint", "--json").stdout)
    assert cp["created"] and cp["tree_size"] == 0
    report = json.loads(cli(home, pg_url, "ledger", "verify", "--json").stdout)
    assert report["ok"] and report["checkpoints"]["checked"] == 1


def test_infermeter_db_is_read_from_the_environment(pg_url: str) -> None:
    """INFERMETER_DB sets the database; a URL that is not PostgreSQL is refused by name."""
    assert load_settings(env={"INFERMETER_DB": pg_url}).db == pg_url
    env = {**os.environ, "INFERMETER_DB": "mysql://x"}
    proc = subprocess.run(
        [sys.executable, "-m", "infermeter.cli.main", "tenants", "list"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "mysql://x" in proc.stderr and "postgresql://" in proc.stderr
