"""mypy --strict holds over src and tests ([tool.mypy] in pyproject.toml): CI fails on a type error."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_src_and_tests_type_check_strictly(tmp_path_factory: pytest.TempPathFactory) -> None:
    """mypy --strict, from a cold cache, exits 0 on the files pyproject.toml names (src, tests)."""
    if importlib.util.find_spec("mypy") is None:
        pytest.fail("mypy is missing: pip install -e '.[test]' installs it")
    cache = tmp_path_factory.mktemp("mypy-cache")  # cold each run: no stale result can pass
    cmd = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
