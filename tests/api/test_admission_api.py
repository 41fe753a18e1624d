"""Admission control through the real server: past the stated bound a 429 with Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import LiveServer, fake_service


def test_past_the_queue_bound_a_request_gets_429_with_retry_after(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """With every slot taken and no queue, a completion is refused with 429 and Retry-After;
    once the slot is back the same request succeeds."""
    live = server_factory(fake_service(tmp_path / "home", max_active=1, max_queued=0))
    admission = live.service.admission
    asyncio.run(admission.enter())  # another request holds the only slot
    url, auth = f"{live.url}/v1/completions", {"authorization": f"Bearer {live.keys['alpha']}"}
    body = {"model": "tiny-gpt", "prompt": "hi", "max_tokens": 2}
    refused = httpx.post(url, json=body, headers=auth, timeout=30)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "max_active=1" in error["message"]
    admission.leave()
    done = httpx.post(url, json=body, headers=auth, timeout=30)
    assert done.status_code == 200 and admission.active == 0
