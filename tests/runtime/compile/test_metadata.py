"""Engine metadata: every field survives JSON; the rebuild command reproduces the build."""

from __future__ import annotations

import json
import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.core.types import Precision
from infermeter.runtime.compile.metadata import (
    DEFAULT_COST_MODEL,
    BuildArgs,
    DriftReport,
    EngineRecord,
    engine_id_for,
)
from infermeter.runtime.compile.profiles import plan_profiles
from tests.runtime.records import make_record


def test_record_round_trips_through_json_text() -> None:
    """to_json → JSON text → from_json gives back an equal record."""
    record = make_record()
    again = EngineRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record
    assert again.cost_model == DEFAULT_COST_MODEL


@given(
    precision=st.sampled_from(list(Precision)),
    batch=st.integers(1, 64),
    context=st.integers(2, 4096),
    drift=st.none()
    | st.builds(DriftReport, st.floats(0, 10), st.floats(0, 1), st.integers(1, 9), st.integers(1, 999)),
    cc=st.none() | st.sampled_from(["8.0", "9.0"]),
)
def test_any_record_round_trips(
    precision: Precision, batch: int, context: int, drift: DriftReport | None, cc: str | None
) -> None:
    """Whatever the precision, limits, drift and device, the JSON form is lossless."""
    record = make_record(
        precision=precision,
        max_batch=batch,
        max_seq_len=context,
        profiles=plan_profiles(batch, context),
        drift=drift,
        compute_capability=cc,
        build=BuildArgs("x", "torch", precision, batch, context, decode_buckets=(64,), calibration="/c.txt"),
    )
    assert EngineRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_rebuild_command_carries_every_build_option() -> None:
    """The command names source, backend, precision, limits, buckets, calibration and name."""
    args = BuildArgs(
        "/models/my model",
        "tensorrt",
        Precision.FP16,
        8,
        512,
        prefill_tokens=256,
        decode_buckets=(128, 511),
        calibration="/data/cal.txt",
        model_name="mine",
    )
    assert shlex.split(args.command()) == [
        "infermeter",
        "engines",
        "build",
        "/models/my model",
        "--backend",
        "tensorrt",
        "--precision",
        "fp16",
        "--max-batch",
        "8",
        "--max-seq-len",
        "512",
        "--prefill-tokens",
        "256",
        "--decode-buckets",
        "128,511",
        "--calibration",
        "/data/cal.txt",
        "--name",
        "mine",
    ]


def test_other_schema_versions_are_refused_with_the_fix() -> None:
    """A record from another schema version asks for a rebuild."""
    data = make_record().to_json() | {"schema": 99}
    with pytest.raises(ValueError, match=r"schema 99.*rebuild"):
        EngineRecord.from_json(data)


def test_a_missing_field_is_named() -> None:
    """A record without its sha256 names the missing key."""
    data = make_record().to_json()
    del data["sha256"]
    with pytest.raises(ValueError, match="sha256"):
        EngineRecord.from_json(data)


def test_engine_id_names_model_backend_precision_device_and_sha() -> None:
    """Engine ids are readable and tie to the artifact's hash."""
    assert engine_id_for("m", "torch", Precision.BF16, "cuda", "0123456789") == ("m-torch-bf16-cuda-01234567")
