"""A complete engine record for tests, built from plausible values (no build runs)."""

from __future__ import annotations

from typing import Any

from infermeter.core.types import Precision
from infermeter.runtime.compile.metadata import BuildArgs, DriftReport, EngineRecord, engine_id_for
from infermeter.runtime.compile.profiles import plan_profiles


def make_record(**changes: Any) -> EngineRecord:
    """A complete record with plausible values (tests override what they need)."""
    sha = "ab" * 32
    fields: dict[str, Any] = dict(
        engine_id=engine_id_for("tiny-gpt", "onnxruntime", Precision.INT8, "cpu", sha),
        model="tiny-gpt",
        backend="onnxruntime",
        precision=Precision.INT8,
        artifact="model.onnx",
        sha256=sha,
        profiles=plan_profiles(16, 1024),
        max_batch=16,
        max_seq_len=1024,
        builder_versions={"infermeter": "0.1.0", "onnx": "1.23.2"},
        runtime="onnxruntime",
        runtime_version="1.32.0",
        device="cpu",
        device_name="AMD EPYC",
        compute_capability=None,
        built_at="2026-11-27T10:00:00+00:00",
        build_seconds=2.5,
        source_sha256="cd" * 32,
        build=BuildArgs("tiny-gpt", "onnxruntime", Precision.INT8, 16, 1024),
        drift=DriftReport(0.04, 0.975, 5, 80),
        options={"format": "QDQ"},
    )
    fields.update(changes)
    return EngineRecord(**fields)
