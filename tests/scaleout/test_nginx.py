"""Debian's nginx with deploy/nginx/infermeter.conf in front of two real `infermeter serve` workers.

Each worker is `infermeter serve --db postgresql://… --queue nats://… --device cpu` on the
built-in model; an `infermeter ingest` process appends what they queue. Skipped, saying
why, where nginx, nats-server or PostgreSQL is missing (scripts/test.sh installs nginx and
nats-server with apt-get where it runs as root).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from infermeter.billing.pg_store import PgStore
from tests.conftest import free_port
from tests.pgtools import fresh_schema

from .conftest import NATS_SERVER, NatsServer

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "nginx" / "infermeter.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
CLI = [sys.executable, "-m", "infermeter.cli.main"]


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout:.0f} s"
        time.sleep(0.1)


def status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


@dataclass
class Cluster:
    db: str
    nats: NatsServer
    dir: Path
    secret: str
    tenant_id: str
    workers: dict[str, tuple[int, subprocess.Popen[bytes]]] = field(default_factory=dict)
    nginx_port: int = 0
    ingester: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}/v1"

    def worker_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.workers[name][0]}"

    def start_worker(self, name: str, *extra: str) -> None:
        port = free_port()
        log = open(self.dir / f"{name}.log", "wb")  # the worker's output, read when it dies
        serve = ["serve", "--queue", self.nats.url, "--port", str(port), "--device", "cpu", "--no-int8"]
        proc = subprocess.Popen(
            [*CLI, "--home", str(self.dir / name), "--db", self.db, *serve, "--threads", "1", *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers[name] = (port, proc)

    def ready(self, name: str) -> bool:
        proc = self.workers[name][1]
        assert proc.poll() is None, (self.dir / f"{name}.log").read_text()[-3000:]
        return status(self.worker_url(name) + "/readyz") == 200

    def start_ingester(self) -> None:
        self.ingester = subprocess.Popen(
            [*CLI, "--db", self.db, "ingest", "--queue", self.nats.url, "--batch", "100"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_ingester(self) -> None:
        if self.ingester is not None:
            self.ingester.send_signal(signal.SIGINT)
            self.ingester.wait(30)
            self.ingester = None

    def served_by(self, since: int) -> list[str]:
        """The worker (host:port) that answered each request nginx logged after line ``since``."""
        return [line.split("|")[2].split(",")[-1].strip() for line in self.access_log()[since:]]

    def access_log(self) -> list[str]:
        path = self.dir / "nginx" / "access.log"
        return path.read_text().splitlines() if path.exists() else []


def nginx_conf(cluster: Cluster, where: Path) -> Path:
    """The shipped file with this test's ports, inside a minimal nginx.conf of its own."""
    site = SHIPPED.read_text()
    ports = iter(port for port, _ in cluster.workers.values())
    site = re.sub(r"server 127\.0\.0\.1:800\d", lambda _: f"server 127.0.0.1:{next(ports)}", site)
    site = site.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{cluster.nginx_port};")
    (where / "infermeter.conf").write_text(site)
    temps = "\n".join(
        f"  {kind}_temp_path {where / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = where / "nginx.conf"
    conf.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\npid {where / 'nginx.pid'};\nerror_log {where / 'error.log'} warn;\n"
        + "events { worker_connections 256; }\nhttp {\n"
        + "  log_format upstreams '$request_uri|$status|$upstream_addr|$upstream_status';\n"
        + f"  access_log {where / 'access.log'} upstreams;\n{temps}\n"
        + f"  include {where / 'infermeter.conf'};\n}}\n"
    )
    return conf


@pytest.fixture(scope="module")
def cluster(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if NGINX is None:
        pytest.skip("nginx is not installed (Debian package nginx; scripts/test.sh installs it as root)")
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed (Debian package nats-server)")
    where = tmp_path_factory.mktemp("cluster")
    db = fresh_schema(pg_database)
    with PgStore(db) as store:  # before the workers: a first start would make its own demo tenant
        tenant = store.create_tenant("acme")
        _, secret = store.create_key(tenant.tenant_id)
    nats = NatsServer(where / "jetstream")
    nats.start()
    c = Cluster(db, nats, where, secret, tenant.tenant_id)
    nginx = None
    try:
        c.start_worker("a")
        c.start_worker("b", "--max-outbox", "10")
        wait_for(lambda: c.ready("a") and c.ready("b"), "both workers ready")
        c.nginx_port = free_port()
        (where / "nginx").mkdir()
        conf = nginx_conf(c, where / "nginx")
        nginx = subprocess.Popen(
            [NGINX, "-p", str(where / "nginx"), "-c", str(conf), "-g", "daemon off;"],
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: status(f"http://127.0.0.1:{c.nginx_port}/healthz") == 200, "nginx up", 30)
        yield c
    finally:
        c.stop_ingester()
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        for _, proc in c.workers.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(60)
        nats.kill()


def record_id_of(done: object) -> str:
    return str(done.model_dump()["usage"]["metering"]["record_id"])  # type: ignore[attr-defined]


def test_the_openai_client_streams_and_completes_through_nginx_and_each_record_lands_once(
    cluster: Cluster,
) -> None:
    """6 plain + 6 streamed chats through nginx over both workers; the ledger holds each once."""
    client = openai.OpenAI(base_url=cluster.base_url, api_key=cluster.secret, max_retries=0, timeout=120)
    ids = []
    first_line = len(cluster.access_log())
    cluster.start_ingester()  # worker b's small outbox bound (--max-outbox 10) is never reached
    for i in range(6):
        done = client.chat.completions.create(
            model="tiny-gpt", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=8
        )
        assert done.choices[0].message.content is not None
        ids.append(record_id_of(done))
        chunks = list(
            client.chat.completions.create(
                model="tiny-gpt",
                messages=[{"role": "user", "content": f"stream {i}"}],
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert any(c.choices and c.choices[0].delta.content for c in chunks)
        ids.append(record_id_of(chunks[-1]))
    every = {f"127.0.0.1:{port}" for port, _ in cluster.workers.values()}
    assert set(cluster.served_by(first_line)) == every  # least_conn used both
    try:
        with PgStore(cluster.db) as store:
            wait_for(lambda: store.has_records(ids) == set(ids), "every record in the ledger", 60)
            records = [r for _, r in store.list_records(cluster.tenant_id, limit=1000)]
            assert sorted(r.record_id for r in records) == sorted(ids)  # once each, nothing else
    finally:
        cluster.stop_ingester()
    verify = subprocess.run([*CLI, "--db", cluster.db, "ledger", "verify"], capture_output=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_worker_whose_outbox_is_full_is_not_ready_and_nginx_routes_around_it(cluster: Cluster) -> None:
    """Worker b (--max-outbox 10, no ingester): readyz 503; nginx sends every request to a."""
    headers = {"authorization": f"Bearer {cluster.secret}"}
    body = {"model": "tiny-gpt", "prompt": "fill", "max_tokens": 2}
    b = cluster.worker_url("b")
    while status(b + "/readyz") == 200:
        assert httpx.post(b + "/v1/completions", json=body, headers=headers, timeout=60).status_code == 200
    ready = httpx.get(b + "/readyz", timeout=5)
    assert ready.status_code == 503 and "--max-outbox" in ready.json()["error"]["message"]
    first_line = len(cluster.access_log())
    for _ in range(6):
        resp = httpx.post(cluster.base_url + "/completions", json=body, headers=headers, timeout=60)
        assert resp.status_code == 200, resp.text
    a = f"127.0.0.1:{cluster.workers['a'][0]}"
    assert cluster.served_by(first_line) == [a] * 6
    cluster.start_ingester()
    try:
        wait_for(lambda: status(b + "/readyz") == 200, "b ready again once its outbox drained", 60)
    finally:
        cluster.stop_ingester()


def test_a_draining_worker_is_routed_around(cluster: Cluster) -> None:
    """SIGTERM worker a: it drains and exits 0; requests through nginx keep succeeding on b."""
    headers = {"authorization": f"Bearer {cluster.secret}"}
    body = {"model": "tiny-gpt", "prompt": "after", "max_tokens": 2}
    b = f"127.0.0.1:{cluster.workers['b'][0]}"

    def b_takes_requests_again() -> bool:  # nginx leaves a worker out for fail_timeout after a 503
        since = len(cluster.access_log())
        httpx.post(cluster.base_url + "/completions", json=body, headers=headers, timeout=60)
        return cluster.served_by(since) == [b]

    wait_for(b_takes_requests_again, "nginx sends requests to b again", 60)
    proc = cluster.workers["a"][1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    first_line = len(cluster.access_log())
    for _ in range(4):
        resp = httpx.post(cluster.base_url + "/completions", json=body, headers=headers, timeout=60)
        assert resp.status_code == 200, resp.text
    assert cluster.served_by(first_line) == [b] * 4
