"""The metadata record of a built engine, stored as ``metadata.json`` and in the engine index.

A record says what the artifact is (model, backend, precision, profiles, limits), what built
it and what runs it (builder and runtime versions, device, compute capability), when and how
long the build took, the artifact's sha256 (the engine's key), the INT8 drift measured at
build time, and the attribution cost-model coefficients the engine starts with. It also
carries the exact build arguments, so a stale engine's error can say how to rebuild it.

``to_json``/``from_json`` round-trip exactly (JSON-native values only; floats only for
measurements, never money).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from infermeter.core.types import Precision
from infermeter.runtime.engine import ShapeProfile

SCHEMA_VERSION = 1

# The attribution model every engine starts with until `infermeter calibrate` fits its own:
# metering.attribution.TOKEN_PROPORTIONAL (runtime may not import metering, so its values).
DEFAULT_COST_MODEL: Mapping[str, int | str] = {
    "version": "token-proportional-v1",
    "alpha": 1,
    "beta": 0,
    "gamma": 1,
    "delta": 0,
    "phi": 0,
}


@dataclass(frozen=True, slots=True)
class DriftReport:
    """How far the INT8 graph's outputs are from the FP32 graph's on a fixed prompt set."""

    max_logit_diff: float  # max |logit_int8 - logit_fp32| over every compared position
    token_agreement: float  # fraction of positions whose greedy (argmax) token agrees
    prompts: int
    positions: int  # compared positions in all

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DriftReport:
        return cls(
            float(data["max_logit_diff"]),
            float(data["token_agreement"]),
            int(data["prompts"]),
            int(data["positions"]),
        )


@dataclass(frozen=True, slots=True)
class BuildArgs:
    """What ``infermeter engines build`` was given; enough to rebuild the same engine."""

    source: str  # a model directory, an ONNX file, or the built-in model's name
    backend: str
    precision: Precision
    max_batch: int
    max_seq_len: int
    prefill_tokens: int | None = None
    decode_buckets: tuple[int, ...] | None = None
    calibration: str | None = None  # a user calibration file; None = the built-in text
    model_name: str | None = None

    def command(self) -> str:
        """The shell command that rebuilds this engine."""
        if self.backend == "transformers":  # built by `models add` from the imported folder
            return shlex.join(["infermeter", "models", "add", self.model_name or "MODEL", self.source])
        parts = [
            "infermeter", "engines", "build", self.source,
            "--backend", self.backend, "--precision", self.precision.value,
            "--max-batch", str(self.max_batch), "--max-seq-len", str(self.max_seq_len),
        ]  # fmt: skip
        if self.prefill_tokens is not None:
            parts += ["--prefill-tokens", str(self.prefill_tokens)]
        if self.decode_buckets is not None:
            parts += ["--decode-buckets", ",".join(map(str, self.decode_buckets))]
        if self.calibration is not None:
            parts += ["--calibration", self.calibration]
        if self.model_name is not None:
            parts += ["--name", self.model_name]
        return shlex.join(parts)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["precision"] = self.precision.value
        data["decode_buckets"] = None if self.decode_buckets is None else list(self.decode_buckets)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildArgs:
        buckets = data.get("decode_buckets")
        return cls(
            source=str(data["source"]),
            backend=str(data["backend"]),
            precision=Precision(data["precision"]),
            max_batch=int(data["max_batch"]),
            max_seq_len=int(data["max_seq_len"]),
            prefill_tokens=_opt_int(data.get("prefill_tokens")),
            decode_buckets=None if buckets is None else tuple(int(b) for b in buckets),
            calibration=data.get("calibration"),
            model_name=data.get("model_name"),
        )


@dataclass(frozen=True, slots=True)
class EngineRecord:
    """Everything known about one built engine. ``sha256`` (of the artifact) is its key."""

    engine_id: str
    model: str
    backend: str  # onnxruntime | tensorrt | torch
    precision: Precision
    artifact: str  # the artifact's file name inside the engine directory
    sha256: str
    profiles: tuple[ShapeProfile, ...]
    max_batch: int
    max_seq_len: int
    builder_versions: Mapping[str, str]  # e.g. {"infermeter": ..., "onnx": ..., "tensorrt": ...}
    runtime: str  # the library that runs the artifact
    runtime_version: str
    device: str  # "cpu" or "cuda"
    device_name: str  # the CPU or GPU model it was built on
    compute_capability: str | None  # e.g. "9.0"; None on CPU
    built_at: str  # ISO 8601 UTC
    build_seconds: float
    source_sha256: str  # of the model the engine was built from
    build: BuildArgs
    drift: DriftReport | None = None
    cost_model: Mapping[str, int | str] = field(default_factory=lambda: dict(DEFAULT_COST_MODEL))
    options: Mapping[str, Any] = field(default_factory=dict)  # precision recipe, pool limits

    @property
    def short_sha(self) -> str:
        return self.sha256[:12]

    def with_cost_model(self, cost_model: Mapping[str, int | str]) -> EngineRecord:
        return replace(self, cost_model=dict(cost_model))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "engine_id": self.engine_id,
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision.value,
            "artifact": self.artifact,
            "sha256": self.sha256,
            "profiles": [asdict(p) for p in self.profiles],
            "max_batch": self.max_batch,
            "max_seq_len": self.max_seq_len,
            "builder_versions": dict(self.builder_versions),
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "device": self.device,
            "device_name": self.device_name,
            "compute_capability": self.compute_capability,
            "built_at": self.built_at,
            "build_seconds": self.build_seconds,
            "source_sha256": self.source_sha256,
            "build": self.build.to_json(),
            "drift": None if self.drift is None else self.drift.to_json(),
            "cost_model": dict(self.cost_model),
            "options": dict(self.options),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineRecord:
        """Inverse of ``to_json``; ValueError naming the field when the record is malformed."""
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            raise ValueError(f"engine metadata schema {schema!r} is not {SCHEMA_VERSION}; rebuild the engine")
        try:
            drift = data.get("drift")
            return cls(
                engine_id=str(data["engine_id"]),
                model=str(data["model"]),
                backend=str(data["backend"]),
                precision=Precision(data["precision"]),
                artifact=str(data["artifact"]),
                sha256=str(data["sha256"]),
                profiles=tuple(ShapeProfile(**p) for p in data["profiles"]),
                max_batch=int(data["max_batch"]),
                max_seq_len=int(data["max_seq_len"]),
                builder_versions={str(k): str(v) for k, v in data["builder_versions"].items()},
                runtime=str(data["runtime"]),
                runtime_version=str(data["runtime_version"]),
                device=str(data["device"]),
                device_name=str(data["device_name"]),
                compute_capability=data.get("compute_capability"),
                built_at=str(data["built_at"]),
                build_seconds=float(data["build_seconds"]),
                source_sha256=str(data["source_sha256"]),
                build=BuildArgs.from_json(data["build"]),
                drift=None if drift is None else DriftReport.from_json(drift),
                cost_model=dict(data.get("cost_model") or DEFAULT_COST_MODEL),
                options=dict(data.get("options") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"engine metadata lacks or mistypes {exc}; rebuild the engine") from exc


def engine_id_for(model: str, backend: str, precision: Precision, device: str, sha256: str) -> str:
    """``<model>-<backend>-<precision>-<device>-<sha256[:8]>``: readable and unique per artifact."""
    return f"{model}-{backend}-{precision.value}-{device}-{sha256[:8]}"


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


__all__ = [
    "DEFAULT_COST_MODEL",
    "SCHEMA_VERSION",
    "BuildArgs",
    "DriftReport",
    "EngineRecord",
    "engine_id_for",
]
