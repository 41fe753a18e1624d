"""Running the CLI in tests: in process (``main([...])``, output captured) for what the
commands do, and as a real process (``run_process``) for exit codes, start-up and signals."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from infermeter.app.service import Service
from infermeter.cli.main import main
from tests.conftest import fake_service


@dataclass(frozen=True)
class Ran:
    """One command's outcome, named like ``subprocess.CompletedProcess``'s fields."""

    returncode: int
    stdout: str
    stderr: str


Cli = Callable[..., Ran]


def run_cli(home: Path, *args: str, check: bool = True) -> Ran:
    """``infermeter --home HOME ARGS…`` in this process, outside a fixture (stdout redirected)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["--home", str(home), *args])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    ran = Ran(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"exit {code}: {ran.stdout}\n{ran.stderr}")
    return ran


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """``cli(home, *args, check=True)``: ``infermeter --home HOME ARGS…`` in this process."""

    def run(home: Path, *args: str, check: bool = True) -> Ran:
        capsys.readouterr()  # drop what came before
        try:
            code = main(["--home", str(home), *args])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        captured = capsys.readouterr()
        ran = Ran(code, captured.out, captured.err)
        if check and code != 0:
            raise AssertionError(f"exit {code}: {ran.stdout}\n{ran.stderr}")
        return ran

    return run


def run_process(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m infermeter.cli.main --home HOME ARGS…`` as its own process."""
    return subprocess.run(
        [sys.executable, "-m", "infermeter.cli.main", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bill_some(home: Path, tenant_id: str, n: int) -> Service:
    """Run n requests for a tenant through a service on the fake engine, then stop it."""
    from infermeter.core.ids import request_id
    from infermeter.core.types import ServiceTier
    from infermeter.runtime.worker import GenerationRequest

    svc = fake_service(home)
    svc.start()
    done = threading.Semaphore(0)
    engine_id = svc.engine_infos()[0].engine_id
    for i in range(n):
        svc.worker.submit(
            GenerationRequest(
                request_id=request_id(),
                tenant_id=tenant_id,
                model="tiny-gpt",
                engine_id=engine_id,
                tier=ServiceTier.FLEX if i % 2 else ServiceTier.DEFAULT,
                prompt_ids=[65 + i, 66],
                max_tokens=3 + i,
                on_finish=lambda _: done.release(),
            )
        )
    for _ in range(n):
        assert done.acquire(timeout=30)
    svc.stop()
    return svc
