"""The engine store: artifacts keyed by sha256, indexed in SQLite, refused when stale."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from infermeter.core.errors import NotFound, StaleEngine
from infermeter.core.types import Precision
from infermeter.runtime.compile.metadata import BuildArgs, EngineRecord, engine_id_for
from infermeter.runtime.engine_store import EngineStore, RuntimeEnv, file_sha256
from tests.runtime.records import make_record

CPU = RuntimeEnv("onnxruntime", "1.32.0", "cpu", "AMD EPYC")
Stage = Callable[..., EngineRecord]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EngineStore]:
    s = EngineStore(tmp_path / "home")
    yield s
    s.close()


@pytest.fixture
def stage(store: EngineStore) -> Stage:
    """``stage(content, **changes)``: put an artifact with a record that matches it."""

    def put(content: bytes = b"graph", **changes: object) -> EngineRecord:
        staging = store.staging()
        (staging / "model.onnx").write_bytes(content)
        sha = file_sha256([staging / "model.onnx"])
        precision = Precision(str(changes.get("precision", Precision.INT8)))
        model = str(changes.get("model", "tiny-gpt"))
        backend = str(changes.get("backend", "onnxruntime"))
        engine_id = engine_id_for(model, backend, precision, "cpu", sha)
        return store.put(staging, make_record(sha256=sha, engine_id=engine_id, **changes))

    return put


def test_put_moves_the_build_under_its_sha_and_indexes_it(store: EngineStore, stage: Stage) -> None:
    """A put engine lives in engines/<sha[:16]> with metadata.json and an index row."""
    record = stage()
    path = store.path(record)
    assert path == store.root / record.sha256[:16]
    assert (path / "model.onnx").read_bytes() == b"graph"
    assert EngineRecord.from_json(json.loads((path / "metadata.json").read_text())) == record
    assert store.list() == [record]
    assert not list((store.root / ".staging").iterdir())


def test_index_lives_in_the_service_database(store: EngineStore, stage: Stage) -> None:
    """The engines table is in <home>/infermeter.db."""
    record = stage()
    with sqlite3.connect(store.home / "infermeter.db") as conn:
        rows = conn.execute("SELECT sha256, engine_id, precision FROM engines").fetchall()
    assert rows == [(record.sha256, record.engine_id, "int8")]


def test_put_refuses_a_record_whose_sha_is_not_its_artifact(store: EngineStore) -> None:
    """A record must hash what it describes."""
    staging = store.staging()
    (staging / "model.onnx").write_bytes(b"graph")
    with pytest.raises(ValueError, match="does not match"):
        store.put(staging, make_record())


def test_same_artifact_again_replaces_its_record(store: EngineStore, stage: Stage) -> None:
    """Identical bytes are one engine: the second put updates the record, keeps one row."""
    first = stage()
    second = stage(build_seconds=9.0)
    assert first.sha256 == second.sha256
    assert store.list() == [second]


def test_get_by_engine_id_or_sha_prefix(store: EngineStore, stage: Stage) -> None:
    """Engines are found by id or by a sha256 prefix of six or more characters."""
    record = stage()
    assert store.get(record.engine_id) == record
    assert store.get(record.sha256[:8]) == record
    with pytest.raises(NotFound, match="engines list"):
        store.get("nope-nope")


def test_latest_and_list_filter_by_kind_newest_first(store: EngineStore, stage: Stage) -> None:
    """latest() finds the newest engine of a (model, backend, precision, device)."""
    old = stage(b"a", precision=Precision.FP32, built_at="2026-01-01T00:00:00+00:00")
    new = stage(b"b", precision=Precision.FP32, built_at="2026-02-01T00:00:00+00:00")
    other = stage(b"c", model="other")
    assert store.latest("tiny-gpt", "onnxruntime", Precision.FP32, "cpu") == new
    assert store.latest("tiny-gpt", "onnxruntime", Precision.INT8, "cpu") is None
    assert store.list("tiny-gpt") == [new, old]
    assert other in store.list()


def test_check_passes_an_intact_current_engine(store: EngineStore, stage: Stage) -> None:
    """An untouched engine for this runtime and device checks out to its directory."""
    record = stage()
    assert store.check(record, CPU) == store.path(record)


def test_check_refuses_a_changed_artifact(store: EngineStore, stage: Stage) -> None:
    """A modified artifact is stale, and the error says which command rebuilds it."""
    record = stage()
    (store.path(record) / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(StaleEngine) as err:
        store.check(record, CPU)
    assert "changed after the build" in err.value.message
    assert (
        "`infermeter engines build tiny-gpt --backend onnxruntime --precision int8 "
        "--max-batch 16 --max-seq-len 1024`"
    ) in err.value.message


def test_check_refuses_a_missing_artifact(store: EngineStore, stage: Stage) -> None:
    """A deleted artifact is named."""
    record = stage()
    (store.path(record) / "model.onnx").unlink()
    with pytest.raises(StaleEngine, match=r"lost model\.onnx.*rebuild it"):
        store.check(record, CPU)


def test_check_refuses_another_runtime_version(store: EngineStore, stage: Stage) -> None:
    """An engine built for another runtime version is stale."""
    record = stage()
    with pytest.raises(
        StaleEngine,
        match=r"built for onnxruntime 1\.32\.0; this process runs "
        r"onnxruntime 1\.99\.0; rebuild it with `infermeter",
    ):
        store.check(record, replace(CPU, version="1.99.0"))


def test_check_refuses_a_foreign_gpu_not_a_foreign_cpu(store: EngineStore, stage: Stage) -> None:
    """A TensorRT plan is tied to its GPU model; a CPU graph runs on any CPU."""
    assert store.check(stage(), replace(CPU, device_name="Intel Xeon"))
    gpu = stage(
        b"plan",
        backend="tensorrt",
        runtime="tensorrt",
        runtime_version="11.4",
        device="cuda",
        device_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        build=BuildArgs("tiny-gpt", "tensorrt", Precision.INT8, 16, 1024),
    )
    here = RuntimeEnv("tensorrt", "11.4", "cuda", "NVIDIA A10", "8.6", portable=False)
    with pytest.raises(
        StaleEngine,
        match=r"built for cuda NVIDIA H100.*9\.0.*has cuda NVIDIA "
        r"A10.*8\.6.*--backend tensorrt",
    ):
        store.check(gpu, here)
    with pytest.raises(StaleEngine, match=r"built for tensorrt 11\.4; this process runs onnxrun"):
        store.check(gpu, CPU)


def test_remove_drops_row_and_files(store: EngineStore, stage: Stage) -> None:
    """remove() deletes the index row and the directory."""
    record = stage()
    store.remove(record)
    assert store.list() == [] and not store.path(record).exists()
