"""A client that goes away — mid-stream, or while waiting for a non-streaming response — is
billed for the work done, with status=cancelled."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import openai
import pytest

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


def test_non_streaming_client_timeout_is_billed_as_cancelled(
    tmp_path: Path, server_factory: Callable[..., LiveServer]
) -> None:
    """A client that times out waiting leaves one cancelled record for the steps run, not the whole."""
    engine = SlowFake()
    live = server_factory(fake_service(tmp_path / "h", engine))
    client = openai.OpenAI(base_url=live.base_url, api_key=live.keys["alpha"], max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        client.completions.create(model="tiny-gpt", prompt="a", max_tokens=500)
    store, tenant = live.service.store, live.tenant_ids["alpha"]
    deadline = time.monotonic() + 20
    records: list[object] = []
    while not records and time.monotonic() < deadline:
        store.flush()
        records = [r for _, r in store.list_records(tenant)]
        time.sleep(0.05)
    assert len(records) == 1, "expected exactly one record for the abandoned request"
    [record] = records
    assert record.status == Status.CANCELLED  # type: ignore[attr-defined]
    assert 0 < record.completion_tokens < 500  # type: ignore[attr-defined]
    # billed for the steps that ran: far less than the 500-token request would have cost
    full_us = engine.cost.step_us([(1, 0, 0)]) + 499 * engine.cost.step_us([(0, 1, 1)])
    assert 0 < record.device_us < full_us  # type: ignore[attr-defined]
    assert record.cost > 0  # type: ignore[attr-defined]
    _limit, _spent, reserved = live.service.budgets.snapshot(tenant)
    assert reserved == 0
