"""A real Prometheus (the distribution's package) scrapes a live infermeter on loopback.

The scrape config is the repository's deploy/prometheus.yml with the target and interval
rewritten; every query of the Grafana dashboard is then run against that Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infermeter.observability.metrics import Metrics
from tests.conftest import LiveServer, free_port

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus.yml"
KEY_FILE = "infermeter-admin.key"  # credentials_file in the scrape config, relative to it
GRAFANA = ROOT / "deploy" / "grafana" / "infermeter.json"
PROMETHEUS = shutil.which("prometheus")
# what Grafana puts in place of its variables before it sends a query
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__range": "5m",
    "$__interval": "15s",
    "$tenant": ".*",
    "$tier": ".*",
    "$model": ".*",
}


def metric_families() -> set[str]:
    """Every family our registry exposes, by the name it has in the exposition format."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def grafana_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            yield from (t["expr"] for t in panel.get("targets", []))
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(GRAFANA.read_text())["panels"]))


def write_key(folder: Path, secret: str) -> None:
    """The admin key where deploy/prometheus.yml's credentials_file points (next to the config)."""
    path = folder / KEY_FILE
    path.write_text(secret + "\n")
    path.chmod(0o600)


@pytest.fixture
def prometheus(fake_server: LiveServer, tmp_path: Path) -> Iterator[str]:
    """Prometheus scraping ``fake_server`` every second; yields its URL; stopped afterwards."""
    if PROMETHEUS is None:
        pytest.skip(
            "no prometheus binary: apt-get install prometheus (scripts/test.sh does it when run as root)"
        )
    target = fake_server.url.removeprefix("http://")
    config = SCRAPE_CONFIG.read_text().replace("127.0.0.1:8000", target)
    config = re.sub(r"(scrape_interval|scrape_timeout|evaluation_interval): \S+", r"\1: 1s", config)
    assert target in config
    (tmp_path / "prometheus.yml").write_text(config)
    write_key(tmp_path, fake_server.admin_key)
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def query(prom: str, expr: str) -> dict[str, Any]:
    resp = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body: dict[str, Any] = resp.json()
    return body


def wait_for(prom: str, expr: str, deadline: float, until: Callable[[float], bool] = lambda v: True) -> float:
    """The query's first value once there is one and ``until`` holds (bounded by ``deadline``).

    Scrapes run every second while the test works, so an early scrape may hold a partial count.
    """
    last: object = "no result"
    while time.monotonic() < deadline:
        try:
            result = query(prom, expr).get("data", {}).get("result", [])
        except httpx.TransportError:  # still starting
            result = []
        if result:
            value = float(result[0]["value"][1])
            if until(value):
                return value
            last = value
        time.sleep(0.25)
    raise AssertionError(f"Prometheus gave {last} for {expr!r} within the time allowed")


def test_prometheus_scrapes_the_billing_series(fake_server: LiveServer, prometheus: str) -> None:
    """The query API returns the tenant's requests and RU exactly as the service counted them."""
    client = fake_server.client("alpha")
    for i in range(3):
        client.completions.create(model="tiny-gpt", prompt=f"scrape {i}", max_tokens=3)
    tenant = fake_server.tenant_ids["alpha"]
    usage = httpx.get(
        fake_server.url + "/v1/usage",
        headers={"authorization": f"Bearer {fake_server.keys['alpha']}"},
        timeout=30,
    ).json()
    ru = sum(float(r["ru"]) for r in usage["data"])

    deadline = time.monotonic() + 60
    wait_for(prometheus, f'sum(infermeter_requests_total{{tenant="{tenant}"}})', deadline, lambda v: v == 3)
    wait_for(
        prometheus,
        f'sum(infermeter_ru_total{{tenant="{tenant}"}})',
        deadline,
        lambda v: v == pytest.approx(ru),
    )
    assert wait_for(prometheus, 'up{job="infermeter"}', deadline) == 1
    assert wait_for(prometheus, 'infermeter_engine_device_ms_total{use="warmup"}', deadline) > 0

    for expr in grafana_exprs():  # every panel's query is valid PromQL over real series
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        body = query(prometheus, expr)
        assert body["status"] == "success", f"{expr}: {body.get('error')}"


def test_grafana_dashboard_covers_every_metric() -> None:
    """Each family on /metrics has a panel, and no panel names a series that does not exist."""
    exprs = " ".join(grafana_exprs())
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"infermeter_\w+", exprs)}
    assert used == metric_families()


def test_scrape_config_targets_the_default_port_with_an_admin_key(tmp_path: Path) -> None:
    """deploy/prometheus.yml scrapes a local infermeter on its default address, sending a bearer key."""
    text = SCRAPE_CONFIG.read_text()
    assert '"127.0.0.1:8000"' in text and "metrics_path: /metrics" in text
    assert re.search(rf"authorization:\s+type: Bearer\s+credentials_file: {KEY_FILE}\n", text)
    promtool = shutil.which("promtool")
    if promtool is not None:  # promtool also checks that the key file exists
        (tmp_path / "prometheus.yml").write_text(text)
        write_key(tmp_path, "im-example")
        check = subprocess.run(
            [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_docs_list_every_metric() -> None:
    """docs/observability.md names every series /metrics exposes, and no other."""
    text = (ROOT / "docs" / "observability.md").read_text()
    table = set(re.findall(r"^\| `(infermeter_\w+)`", text, flags=re.MULTILINE))
    assert table == metric_families()
