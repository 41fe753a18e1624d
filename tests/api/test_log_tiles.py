"""The issue's "done when", through real servers: an auditor, a tenant and a witness.

- an auditor fetches /log/checkpoint and every tile with plain HTTP and the independent
  client, recomputes the root, and checks an older checkpoint is a prefix of the newer one;
- a tenant downloads a .tlog-proof receipt and verifies it offline with the log's verifier
  key and one witness key (`infermeter receipt verify`);
- `infermeter witness serve` cosigns; after the newest entries are deleted it refuses the
  shorter log, and `infermeter ledger verify --witness` fails naming the fork.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infermeter.app.service import Service
from tests import independent_tlog as ind
from tests.billing.ledger_records import make_record
from tests.cli.conftest import run_cli as cli
from tests.conftest import LiveServer, fake_service, free_port, run_server


def fetch(live: LiveServer, path: str) -> httpx.Response:
    return httpx.get(f"{live.url}/log/{path}", timeout=30)


def test_an_auditor_rebuilds_the_root_from_tiles_and_checks_an_older_checkpoint(
    fake_server: LiveServer,
) -> None:
    """Checkpoint at 300, then 700: both roots come out of the tiles; full tiles are immutable."""
    svc = fake_server.service
    assert svc.public_log is not None and svc.log_publisher is not None  # a SQLite ledger publishes
    vkey = httpx.get(f"{fake_server.url}/v1/ledger/key").json()["verifier_key"]
    start = svc.public_log.sync()
    svc.store.append([make_record(i) for i in range(300 - start)])
    svc.log_publisher.tick()
    older = fetch(fake_server, "checkpoint")
    assert older.headers["content-type"] == "text/plain; charset=utf-8"
    old_text, signed = ind.open_note(older.content, [vkey])
    origin, old_size, old_root = ind.parse_checkpoint(old_text)
    assert signed == [origin] and old_size == 300
    svc.store.append([make_record(i) for i in range(300, 700)])
    svc.log_publisher.tick()
    text, _ = ind.open_note(fetch(fake_server, "checkpoint").content, [vkey])
    _, size, root = ind.parse_checkpoint(text)
    assert size == 700

    def get(path: str) -> bytes:
        resp = fetch(fake_server, path)
        assert resp.status_code == 200, (path, resp.text)
        return resp.content

    leaves = ind.fetch_tree(size, get)
    assert ind.mth(leaves) == root
    assert ind.mth(leaves[:old_size]) == old_root  # the older tree is a prefix of the newer
    full = fetch(fake_server, "tile/0/001")
    assert full.headers["content-type"] == "application/octet-stream"
    assert "immutable" in full.headers["cache-control"]
    partial = fetch(fake_server, "tile/0/002.p/188")  # tlog-tiles: partial tiles are immutable too
    assert "immutable" in partial.headers["cache-control"] and len(partial.content) == 188 * 32
    assert fetch(fake_server, "tile/0/002.p/44").content == partial.content[: 44 * 32]  # size 300's
    assert "no-cache" in fetch(fake_server, "checkpoint").headers["cache-control"]
    assert fetch(fake_server, "tile/0/003").status_code == 404
    assert fetch(fake_server, "tile/0/1").status_code == 400


def serve_witness(home: Path, name: str, log_vkey: str) -> tuple[subprocess.Popen[str], str, str]:
    """`infermeter witness serve` in its own process; returns it, its URL and its verifier key."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "infermeter.cli.main", "witness", "serve", "--dir", str(home),
         "--name", name, "--log", log_vkey, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.post(f"{url}/add-checkpoint", content=b"", timeout=2)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("witness did not start") from None
            time.sleep(0.1)
    return proc, url, (home / "witness.vkey").read_text().strip()


def cut_newest(db_path: Path, keep: int) -> None:
    """After a kill -9: delete the newest entries, fix the head, and hide the public checkpoints."""
    db = sqlite3.connect(db_path)
    for (trigger,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {trigger}")
    (head,) = db.execute("SELECT entry_hash FROM ledger WHERE seq = ?", (keep - 1,)).fetchone()
    db.execute("DELETE FROM ledger WHERE seq >= ?", (keep,))
    db.execute("UPDATE ledger_head SET size = ?, head = ? WHERE id = 0", (keep, head))
    db.execute("DELETE FROM log_cosignatures")
    db.execute("DELETE FROM log_checkpoints")
    db.execute("DELETE FROM checkpoints")  # the ledger's own checkpoints too: only copies elsewhere remain
    db.commit()
    db.close()


def close(svc: Service) -> None:
    svc.store.close()
    assert svc.public_log is not None
    svc.public_log.close()
    svc.checkpoints.close()


def test_a_witnessed_receipt_verifies_offline_and_a_truncated_log_is_refused(tmp_path: Path) -> None:
    """Tenant: receipt + two verifier keys. Then entries are cut: witness refuses, verify names the fork."""
    home = tmp_path / "home"
    first = fake_service(home)
    assert first.public_log is not None
    log_vkey = first.public_log.active_verifier_key().text()
    close(first)
    witness, url, witness_vkey = serve_witness(tmp_path / "witness", "witness.test/w1", log_vkey)
    try:
        server = run_server(fake_service(home, witnesses=f"{url} {witness_vkey}"))
        live = next(server)
        record_id = (
            live.client()
            .completions.create(model="tiny-gpt", prompt="hi", max_tokens=3)
            .usage.model_extra["metering"]["record_id"]
        )
        auth = {"authorization": f"Bearer {live.keys['alpha']}"}
        resp = httpx.get(f"{live.url}/v1/receipts/{record_id}?format=tlog-proof", headers=auth, timeout=30)
        assert resp.status_code == 200 and resp.text.startswith("c2sp.org/tlog-proof@v1\n")
        receipt = tmp_path / f"{record_id}.tlog-proof"
        receipt.write_bytes(resp.content)
        tenant = tmp_path / "tenant"  # no database, no keys: only the two verifier keys
        ok = cli(tenant, "receipt", "verify", str(receipt), "--key", log_vkey, "--witness", witness_vkey)
        assert "valid" in ok.stdout and "witness.test/w1" in ok.stdout
        assert ind.verify_tlog_proof(resp.content, log_vkey, [witness_vkey])[1] == ["witness.test/w1"]
        receipt.write_text(resp.text.replace("extra ", "extra AAAA", 1))
        assert cli(tenant, "receipt", "verify", str(receipt), "--key", log_vkey, check=False).returncode == 1
        live.service.store.append([make_record(i) for i in range(4)])
        assert live.service.log_publisher is not None
        live.service.log_publisher.tick()
        held = tmp_path / "checkpoint.txt"  # an auditor keeps the cosigned checkpoint
        held.write_bytes(httpx.get(f"{live.url}/log/checkpoint").content)
        assert "witness.test/w1" in held.read_text()
        size = int(held.read_text().split("\n")[1])
        origin = held.read_text().split("\n")[0]
        view = httpx.get(f"{url}/{hashlib.sha256(origin.encode()).hexdigest()}/checkpoint", timeout=30)
        text, signers = ind.open_note(view.content, [log_vkey, witness_vkey])  # the witness's own view
        assert view.status_code == 200 and signers == [origin, "witness.test/w1"]
        assert ind.parse_checkpoint(text)[1] == size
        conflict = httpx.post(f"{url}/add-checkpoint", content=b"old 0\n\n" + held.read_bytes(), timeout=30)
        assert conflict.status_code == 409 and conflict.text == f"{size}\n"
        assert conflict.headers["content-type"] == "text/x.tlog.size"
        for _ in server:  # stop the server (and the service)
            pass
        keep = size - 2
        cut_newest(home / "infermeter.db", keep)
        again = fake_service(home, witnesses=f"{url} {witness_vkey}")
        assert again.public_log is not None and again.log_publisher is not None
        cp, _ = again.public_log.publish()  # the log signs the shorter tree...
        assert cp.tree_size == keep
        assert not again.log_publisher.submit(again.log_publisher.witnesses[0], cp)  # ...the witness refuses
        assert "rolled back or forked" in again.log_publisher.last_error["witness.test/w1"]
        close(again)
        verify = cli(
            home, "ledger", "verify", "--witness", witness_vkey, "--cosigned", str(held), check=False
        )
        message = " ".join(verify.stderr.split())
        assert verify.returncode == 1 and "FORK" in message and "witness.test/w1" in message, message
        assert f"entries {keep}..{size - 1} were removed" in message
    finally:
        witness.terminate()
        witness.wait(10)


def test_entries_whose_salts_were_removed_fail_verify_without_a_traceback(tmp_path: Path) -> None:
    """Salts of the newest entries deleted by hand: `ledger verify --cosigned` exits 1 saying so."""
    home = tmp_path / "home"
    svc = fake_service(home)
    public = svc.public_log
    assert public is not None  # the SQLite store has a public log
    start = public.sync()
    svc.store.append([make_record(i) for i in range(6 - start)])
    svc.store.flush()
    cp, _ = public.publish()
    held = tmp_path / "checkpoint.txt"
    held.write_bytes(public.cosigned(cp).encode())
    close(svc)
    db = sqlite3.connect(home / "infermeter.db")
    db.execute("DROP TRIGGER log_salts_no_delete")
    db.execute("DELETE FROM log_salts WHERE seq >= 3")
    db.commit()
    db.close()
    verify = cli(home, "ledger", "verify", "--cosigned", str(held), check=False)
    message = " ".join(verify.stderr.split())
    assert verify.returncode == 1 and "Traceback" not in verify.stderr, verify.stderr
    assert "covers 6 entries but only 3 of the ledger's 6 have their public-log salt" in message, message
