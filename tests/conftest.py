"""Shared fixtures: a real uvicorn server on loopback around a real Service and SQLite store."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from infermeter.api.app import create_app
from infermeter.app.service import Service
from infermeter.config import Settings, load_settings
from infermeter.runtime.engine import LoadedEngine
from infermeter.runtime.fake_engine import FakeEngine
from infermeter.runtime.tokenizer import ByteTokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    service: Service
    keys: dict[str, str] = field(default_factory=dict)  # tenant name -> secret
    tenant_ids: dict[str, str] = field(default_factory=dict)
    admin_key: str = ""

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def client(self, tenant: str = "alpha", **kwargs: Any) -> Any:
        import openai

        return openai.OpenAI(
            base_url=self.base_url, api_key=self.keys[tenant], max_retries=0, timeout=60, **kwargs
        )


def run_server(service: Service, tenants: tuple[str, ...] = ("alpha", "beta")) -> Iterator[LiveServer]:
    """Start ``service`` behind uvicorn on a free loopback port; stop it afterwards."""
    live = LiveServer("", service)
    for name in tenants:
        tenant = service.store.create_tenant(name)
        _, secret = service.store.create_key(tenant.tenant_id)
        live.keys[name] = secret
        live.tenant_ids[name] = tenant.tenant_id
    _, live.admin_key = service.store.create_key(None, admin=True)
    port = free_port()
    config = uvicorn.Config(
        create_app(service), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    live.url = f"http://127.0.0.1:{port}"
    try:
        yield live
    finally:
        server.should_exit = True
        thread.join(30)


def fake_service(home: Path, *engines: FakeEngine, **settings: Any) -> Service:
    """A service on the model-free FakeEngine: exact scripted device time, instant steps."""
    cfg = load_settings({"home": home, "warmup_steps": 2, **settings}, env={})
    loaded = [LoadedEngine(e, ByteTokenizer()) for e in (engines or (FakeEngine(),))]
    return Service(cfg, loaded)


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[LiveServer]:
    yield from run_server(fake_service(tmp_path / "home"))


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start servers on demand (each with its own home); all stopped at teardown."""
    stack: list[Iterator[LiveServer]] = []

    def make(service: Service, tenants: tuple[str, ...] = ("alpha", "beta")) -> LiveServer:
        gen = run_server(service, tenants)
        stack.append(gen)
        return next(gen)

    yield make
    for gen in reversed(stack):
        for _ in gen:
            pass


@pytest.fixture(scope="session")
def ort_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real thing: the built-in model on ONNX Runtime, shared by the tests that need it."""
    home = tmp_path_factory.mktemp("ort-home")
    cfg: Settings = load_settings({"home": home, "warmup_steps": 2}, env={})
    yield from run_server(Service.from_settings(cfg))
