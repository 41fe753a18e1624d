"""A client that disconnects mid-stream is billed for the work done, with status=cancelled."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from infermeter.core.types import Status
from infermeter.runtime.engine import SeqInput, StepOutput
from infermeter.runtime.fake_engine import FakeEngine
from tests.conftest import LiveServer, fake_service


class SlowFake(FakeEngine):
    """A FakeEngine whose steps take real time, so a client can leave mid-generation."""

    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        time.sleep(0.01)
        return super().step(inputs)


def test_disconnect_mid_stream_bills_work_done(
    tmp_path: Path, server_factory: Callable[..., LiveServer]
) -> None:
    """Reading three chunks then closing leaves a cancelled record with the tokens made so far."""
    live = server_factory(fake_service(tmp_path / "h", SlowFake()))
    headers = {"authorization": f"Bearer {live.keys['alpha']}"}
    body = {"model": "tiny-gpt", "prompt": "a", "max_tokens": 500, "stream": True}
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", live.url + "/v1/completions", json=body, headers=headers) as resp:
            assert resp.status_code == 200
            rid = resp.headers["x-request-id"]
            lines = resp.iter_lines()
            got = 0
            for line in lines:
                if line.startswith("data: "):
                    got += 1
                if got == 3:
                    break
    store = live.service.store
    deadline = time.monotonic() + 20
    record = None
    while record is None and time.monotonic() < deadline:
        store.flush()
        record = store.get_by_request(rid)
        time.sleep(0.05)
    assert record is not None, "no record for the cancelled request"
    assert record.status == Status.CANCELLED
    assert 0 < record.completion_tokens < 500
    assert record.device_us > 0 and record.cost > 0
    # the server keeps serving
    ok = httpx.post(
        live.url + "/v1/completions",
        headers=headers,
        json={"model": "tiny-gpt", "prompt": "a", "max_tokens": 2},
        timeout=30,
    )
    assert ok.status_code == 200
