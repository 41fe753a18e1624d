"""``serve`` around its lifetime: it verifies the ledger before serving, and SIGTERM drains
for at most ``--graceful-timeout`` seconds, then bills what is left as cancelled."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from infermeter.billing.checkpoint_log import CheckpointLog
from infermeter.billing.signing import LedgerKeys
from infermeter.billing.sqlite_store import SqliteStore
from infermeter.cli.main import main
from infermeter.core.types import Status
from tests.billing.ledger_records import make_record
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def _home_with_key(home: Path) -> str:
    with SqliteStore(home / "infermeter.db") as store:
        tenant = store.create_tenant("alpha")
        return store.create_key(tenant.tenant_id)[1]


def _start(home: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, "-m", "tests.cli.slow_serve", "--home", str(home), "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "exited"
        assert time.monotonic() < deadline, "serve did not start"
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def _stream_until_first_token(url: str, key: str, ids: list[str]) -> threading.Thread:
    """Open a long stream on a thread; returns once its first token arrived."""
    first = threading.Event()

    def read() -> None:
        body = {"model": "tiny-gpt", "prompt": "a", "max_tokens": 8000, "stream": True}
        try:
            with httpx.stream(
                "POST",
                url + "/v1/completions",
                json=body,
                headers={"authorization": f"Bearer {key}"},
                timeout=120,
            ) as resp:
                ids.append(resp.headers["x-request-id"])
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        first.set()
        except httpx.TransportError:
            pass  # the server went away: expected once it has drained
        first.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert first.wait(60)
    return thread


def test_sigterm_drains_at_most_the_graceful_timeout_then_bills_what_is_left_as_cancelled(
    tmp_path: Path,
) -> None:
    """Two 8,000-token streams at SIGTERM: exit 0 long before they end; both billed cancelled."""
    home = tmp_path / "home"
    key = _home_with_key(home)
    proc, url = _start(home, "--graceful-timeout", "1")
    ids: list[str] = []
    readers = [_stream_until_first_token(url, key, ids) for _ in range(2)]
    proc.send_signal(signal.SIGTERM)
    # 8,000 steps of 10 ms each would take 80 s; the drain gives up after 1 s
    assert proc.wait(timeout=40) == 0, proc.stdout.read().decode() if proc.stdout else ""
    for reader in readers:
        reader.join(10)
    with SqliteStore(home / "infermeter.db") as store:
        records = [store.get_by_request(rid) for rid in ids]
    assert len(records) == 2
    for record in records:
        assert record is not None, "a request in flight at SIGTERM has no usage record"
        assert record.status == Status.CANCELLED
        assert 0 < record.completion_tokens < 8000 and record.cost > 0
    assert main(["ledger", "verify", "--home", str(home)]) == 0


def test_requests_cut_at_the_drain_deadline_get_complete_answers(tmp_path: Path) -> None:
    """At the deadline the service cancels what is left itself: a non-streaming client gets
    its JSON (partial text, billed cancelled), a stream its final chunk and [DONE]."""
    home = tmp_path / "home"
    key = _home_with_key(home)
    proc, url = _start(home, "--graceful-timeout", "1")
    headers = {"authorization": f"Bearer {key}"}
    answers: dict[str, object] = {}

    def plain() -> None:
        body = {"model": "tiny-gpt", "prompt": "a", "max_tokens": 8000}
        answers["plain"] = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=60)

    def stream() -> None:
        body = {"model": "tiny-gpt", "prompt": "a", "max_tokens": 8000, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, headers=headers, timeout=60) as r:
            answers["stream"] = [line for line in r.iter_lines() if line]

    threads = [threading.Thread(target=f, daemon=True) for f in (plain, stream)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # both running
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0
    for thread in threads:
        thread.join(10)
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert "Exception in ASGI application" not in output, output
    resp = answers["plain"]
    assert isinstance(resp, httpx.Response) and resp.status_code == 200, resp
    usage = resp.json()["usage"]
    assert 0 < usage["completion_tokens"] < 8000
    assert usage["metering"]["status"] == "cancelled"
    lines = answers["stream"]
    assert isinstance(lines, list) and lines[-1] == "data: [DONE]"


def _ledger_with_tail(home: Path) -> Path:
    """Five entries under a signed checkpoint, then three more after it."""
    db = home / "infermeter.db"
    home.mkdir(parents=True)
    with SqliteStore(db) as store:
        store.append([make_record(i) for i in range(5)])
        log = CheckpointLog(db, LedgerKeys(home / "keys"))
        log.checkpoint()
        log.close()
        store.append([make_record(i) for i in range(5, 8)])
    return db


def _tamper(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute(sql)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("edit", "first_bad"),
    [
        ("DELETE FROM ledger WHERE seq = 7", "7"),  # the tail cut off, as after a lost write
        ("UPDATE ledger SET payload = replace(payload, 'tiny-gpt', 'tiny-gpX') WHERE seq = 6", "6"),
    ],
)
def test_serve_refuses_a_ledger_whose_unsigned_tail_was_cut_or_rewritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: str, first_bad: str
) -> None:
    """Entries after the last checkpoint are verified at start: exit 1 naming the first bad one."""
    home = tmp_path / "home"
    _tamper(_ledger_with_tail(home), edit)
    assert main(["serve", "--home", str(home)]) == 1
    err = capsys.readouterr().err
    assert "refusing to serve" in err and f"first bad entry: {first_bad}" in err
    assert "--allow-unverified" in err


def test_allow_unverified_serves_on_a_bad_ledger_and_says_so(tmp_path: Path) -> None:
    """With --allow-unverified the same ledger is served, with a loud warning."""
    home = tmp_path / "home"
    _tamper(_ledger_with_tail(home), "DELETE FROM ledger WHERE seq = 7")
    proc, url = _start(home, "--allow-unverified", "--graceful-timeout", "0")
    health = httpx.get(url + "/healthz", timeout=10).json()
    assert health["status"] == "ok"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=40)
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert "SERVING ON AN UNVERIFIED LEDGER" in output


def test_serve_signs_a_checkpoint_over_a_verified_ledger_at_start(tmp_path: Path) -> None:
    """A good ledger starts, and its unsigned tail is signed before anything is admitted."""
    home = tmp_path / "home"
    _ledger_with_tail(home)
    proc, _ = _start(home, "--graceful-timeout", "0")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=40)
    log = CheckpointLog(home / "infermeter.db", LedgerKeys(home / "keys", create=False))
    try:
        sizes = [cp.tree_size for cp in log.page()]
    finally:
        log.close()
    assert sizes[:2] == [5, 8]
    assert json.dumps(sizes)
