"""The command line as its own process: what starting it loads, and `serve`'s life cycle."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import Cli
from tests.conftest import free_port

# What `--help` and the read-only commands must never load: the engines' numeric and model
# libraries, and the server's web stack. Importing them is most of a slow start.
HEAVY = (
    "numpy",
    "onnx",
    "onnxruntime",
    "tokenizers",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "prometheus_client",
    "infermeter.runtime.engine",
    # app.stores (which store --db names) is light; the service, pipeline and engines are not
    "infermeter.app.service",
    "infermeter.app.pipeline",
    "infermeter.app.engines",
    "infermeter.api",
)

_LOADED = """
import json, sys
from infermeter.cli.main import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""

READ_ONLY = [
    ["--help"],
    ["tenants", "list"],
    ["keys", "list", "--json"],
    ["usage"],
    ["ledger", "verify"],
    ["invoice", "acme", "--period", "2025-01"],
]


@pytest.mark.parametrize("argv", READ_ONLY, ids=lambda a: " ".join(a))
def test_read_only_commands_start_without_the_engine_or_web_stack(
    cli: Cli, tmp_path: Path, argv: list[str]
) -> None:
    """A fresh process running `--help` or a read-only command never imports numpy, onnx, fastapi…"""
    cli(tmp_path, "tenants", "create", "acme")
    report = tmp_path / "loaded.json"
    args = argv if argv == ["--help"] else ["--home", str(tmp_path), *argv]
    subprocess.run([sys.executable, "-c", _LOADED, str(report), *args], check=True, timeout=120)
    loaded = json.loads(report.read_text())
    assert loaded["code"] == 0
    modules = set(loaded["modules"])
    assert [m for m in HEAVY if m in modules] == []


def test_an_unknown_command_exits_2_naming_the_choices(tmp_path: Path) -> None:
    """A mistyped command is a usage error (exit 2) listing the commands there are."""
    proc = subprocess.run(
        [sys.executable, "-m", "infermeter.cli.main", "--home", str(tmp_path), "tenant", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "tenants" in proc.stderr


def test_serve_answers_and_exits_0_on_sigint(tmp_path: Path) -> None:
    """`infermeter serve` comes up on the built-in model, answers, and on Ctrl-C stops cleanly."""
    port = free_port()
    cmd = [sys.executable, "-m", "infermeter.cli.main", "--home", str(tmp_path), "serve"]
    cmd += ["--port", str(port), "--no-int8", "--threads", "1", "--log-level", "warning"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health = _wait_healthy(f"http://127.0.0.1:{port}", server)
        assert health["status"] == "ok" and health["engines"]
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err
    assert "First start: created tenant demo" in out


def _wait_healthy(base: str, server: subprocess.Popen[str]) -> dict[str, object]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and server.poll() is None:
        try:
            body: dict[str, object] = httpx.get(base + "/healthz", timeout=2).json()
            if body.get("status") == "ok":
                return body
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"serve did not become healthy (exit {server.poll()})")
