"""Fail closed: while the ledger cannot append, nothing is admitted and nothing is served free.

The disk is really full: the service's home is on a small tmpfs (mounting needs root; the
tests skip without it) and a filler file takes every free byte. Freeing it recovers.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from infermeter.billing.sqlite_store import SqliteStore
from infermeter.runtime.engine import SeqInput, StepOutput
from infermeter.runtime.fake_engine import FakeEngine, fake_engine_info
from tests.billing.ledger_records import make_record
from tests.conftest import LiveServer, fake_service


class SlowFake(FakeEngine):
    """Steps that take real time, so a stream is still running when the disk fills."""

    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        time.sleep(0.01)
        return super().step(inputs)


@dataclass
class SmallDisk:
    """A 16 MiB tmpfs; ``fill`` takes every free byte with one file, ``free`` deletes it."""

    root: Path
    filler: Path = field(init=False)

    def __post_init__(self) -> None:
        self.filler = self.root / "filler"

    def fill(self) -> None:
        with self.filler.open("ab", buffering=0) as fh:
            for size in (1 << 16, 1 << 10, 1):  # big chunks, then the last bytes
                try:
                    while True:
                        fh.write(b"\0" * size)
                except OSError:
                    pass

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(root)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield SmallDisk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def _post(live: LiveServer, **body: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {live.keys['alpha']}"}
    payload = {"model": "tiny-gpt", "prompt": "a", "max_tokens": 2, **body}
    return httpx.post(live.url + "/v1/completions", json=payload, headers=headers, timeout=30)


def _until_refused(live: LiveServer) -> httpx.Response:
    """Send small requests until one is refused: WAL space already allocated is reused first."""
    for _ in range(2000):
        resp = _post(live)
        if resp.status_code != 200:
            return resp
    raise AssertionError("2000 requests were served on a full disk")


@dataclass
class Stream:
    """A stream read on a thread: the text pieces it got and the error event it ended with."""

    texts: list[str] = field(default_factory=list)
    error: dict[str, object] | None = None
    done: bool = False
    started: threading.Event = field(default_factory=threading.Event)


def _stream(live: LiveServer, max_tokens: int) -> tuple[Stream, threading.Thread]:
    got = Stream()

    def read() -> None:
        headers = {"authorization": f"Bearer {live.keys['alpha']}"}
        body = {"model": "tiny-gpt", "prompt": "a", "max_tokens": max_tokens, "stream": True}
        with httpx.stream("POST", live.url + "/v1/completions", json=body, headers=headers, timeout=60) as r:
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    got.done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    got.error = event["error"]
                    break
                got.texts.append(event["choices"][0]["text"])
                got.started.set()
        got.started.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return got, thread


def test_a_full_disk_stops_admission_flips_health_and_serves_nothing_free(
    small_disk: SmallDisk, server_factory: Callable[..., LiveServer]
) -> None:
    """Disk full: 503s naming the cause, health 503, the running stream cut; freed: it recovers."""
    info = fake_engine_info(max_seq_len=4096)
    live = server_factory(fake_service(small_disk.root / "home", SlowFake(info=info, eos_after=None)))
    stream, reader = _stream(live, max_tokens=4000)
    assert stream.started.wait(30) and stream.texts, "the stream did not start"

    small_disk.fill()
    failed = _until_refused(live)  # its own record could not be written: an error, no text
    assert failed.status_code == 503 and "choices" not in failed.json()
    refused = _post(live)  # refused at admission, naming the cause
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "ledger_unavailable"
    assert "disk is full" in error["message"] or "bytes free" in error["message"]

    for path in ("/healthz", "/health", "/readyz"):
        probe = httpx.get(live.url + path, timeout=10)
        assert probe.status_code == 503, path
        assert probe.json()["error"]["code"] == "ledger_unavailable"

    # a new request is refused before any token; a new stream too
    again = _post(live, stream=True, max_tokens=50)
    assert again.status_code == 503 and "data:" not in again.text
    # the stream admitted before the fault was cut, with an error event, not served to the end
    reader.join(60)
    assert not stream.done and stream.error is not None
    assert len("".join(stream.texts)) < 4000

    small_disk.free()
    deadline = time.monotonic() + 30
    while httpx.get(live.url + "/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the service did not recover after space was freed"
        time.sleep(0.1)
    ok = _post(live)
    assert ok.status_code == 200
    store = live.service.store
    store.flush()
    assert store.get_by_request(ok.headers["x-request-id"]) is not None
    assert store.verify().ok


def test_a_failed_commit_sets_store_health_and_a_successful_one_clears_it(tmp_path: Path) -> None:
    """SQLITE_FULL from a page limit is a fault that health() names; the next good commit clears it."""
    with SqliteStore(tmp_path / "l.db") as store:
        assert store.health() is None
        store.write(lambda conn: conn.execute("PRAGMA max_page_count = 1"))  # no page may be added
        with pytest.raises(Exception, match="full"):
            for i in range(200):
                store.append([make_record(i)])
        assert store.health() is not None and "full" in store.health()  # type: ignore[operator]
        store.write(lambda conn: conn.execute("PRAGMA max_page_count = 1000000"))
        store.append([make_record(999)])
        assert store.health() is None
