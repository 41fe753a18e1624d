"""Fixtures for build tests: the tiny Optimum-layout user model, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from infermeter.runtime.compile.testmodel import write_test_model


@pytest.fixture(scope="session")
def user_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny user model directory (model.onnx, config.json, tokenizer.json)."""
    return write_test_model(tmp_path_factory.mktemp("user-model"))
