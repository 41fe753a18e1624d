"""serve --model-dir with a Hugging Face folder: imported as `models add` would, then reused.

The folder is a tiny random-weight Llama (``tests/tiny_llama.py``), so the import, the
transformers engines and the economy gate run for real in seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infermeter.app.engines import gate_refusal, load_default_engines, serve_name
from infermeter.config import load_settings
from infermeter.core.errors import ConfigError
from infermeter.core.timing import NullTimer
from infermeter.core.types import Precision
from infermeter.runtime.compile.metadata import EngineRecord
from infermeter.runtime.engine import EngineInfo
from infermeter.runtime.engine_store import EngineStore, ModelRecord
from tests.tiny_llama import write_tiny_llama


def serve_once(home: Path, model_dir: Path) -> dict[str, EngineInfo]:
    """engine_id -> EngineInfo of what serve loads with ``--model-dir`` (engines closed)."""
    settings = load_settings({"home": home, "model_dir": str(model_dir)}, env={})
    loaded = load_default_engines(settings, NullTimer)
    for item in loaded:
        item.engine.close()
    return {item.engine.info.engine_id: item.engine.info for item in loaded}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("hf") / "tiny-llama")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Path:
    path = tmp_path_factory.mktemp("home")
    serve_once(path, folder)
    return path


def records(home: Path) -> tuple[list[ModelRecord], list[EngineRecord]]:
    store = EngineStore(home)
    try:
        return store.models(), store.list("tiny-llama")
    finally:
        store.close()


def test_an_hf_folder_is_imported_and_served_on_the_transformers_backend(home: Path, folder: Path) -> None:
    """The folder becomes model `tiny-llama` (its name) with FP32 and gated INT8 engines; FP32
    serves, INT8 serves exactly when it passed its gate."""
    (model,), engines = records(home)
    assert (model.name, model.kind, model.source) == ("tiny-llama", "hf", str(folder.resolve()))
    by_precision = {e.precision: e for e in engines}
    assert sorted(p.value for p in by_precision) == ["fp32", "int8"]
    int8 = by_precision[Precision.INT8]
    assert "gate" in int8.options
    served = [i for i in serve_once(home, folder).values() if i.model == "tiny-llama"]
    expected = {Precision.FP32} | ({Precision.INT8} if gate_refusal(int8) is None else set())
    assert {i.precision for i in served} == expected
    assert {i.backend for i in served} == {"transformers"}


def test_a_second_start_reuses_the_import(home: Path, folder: Path) -> None:
    """Nothing is imported or built again: the same model row and engine records."""
    before = records(home)
    serve_once(home, folder)
    assert records(home) == before


def test_a_name_taken_by_another_source_is_refused(home: Path, folder: Path, tmp_path: Path) -> None:
    """Another folder of the same name is a ConfigError naming `models add NAME`."""
    other = write_tiny_llama(tmp_path / "tiny-llama", seed=1)
    with pytest.raises(ConfigError, match=r"'tiny-llama' was already added from .*models add NAME"):
        serve_once(home, other)


@pytest.mark.parametrize(
    ("source", "name"),
    [("/m/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"), ("/m/my model", "my-model")],
)
def test_the_served_name_is_the_file_stem_or_folder_name(source: str, name: str) -> None:
    """A .gguf is served under its stem, a folder under its name, made a valid model name."""
    assert serve_name(Path(source)) == name
