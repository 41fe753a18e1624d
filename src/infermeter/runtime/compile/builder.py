"""``build_engine``: from a model to an indexed engine, in one staged, all-or-nothing step.

1. Resolve the source: the built-in model's name (written under ``models_dir`` on first
   use), a model directory (``model.onnx`` + ``config.json`` [+ tokenizer files]), or an
   ONNX file whose directory holds the config.
2. Plan the shape profiles (``profiles.plan_profiles``) within the model's context.
3. Make the precision-specific graph: FP32 as is, FP16 converted, INT8 quantized. ONNX
   Runtime's INT8 is weight-only (``MatMulNBits``) and must pass the economy gate against the
   FP32 graph (``onnx_gate``: drift and decode speed); a build that fails is indexed with its
   figures in ``options.gate`` and kept out of serving unless ``force``. TensorRT's INT8 is
   static Q/DQ over the calibration set, with its drift measured (no gate: never run here).
4. Make the backend's artifact: the graph itself (ONNX Runtime), a TensorRT plan, or the
   weights in the precision (PyTorch).
5. Hash it, write the metadata record, move it into the store and index it.

Everything happens in a staging directory that is moved into place only when complete, so a
failed build leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infermeter.core.errors import ConfigError
from infermeter.core.types import Precision
from infermeter.runtime.builtin_model import BUILTIN_MODEL_NAME, ensure_builtin_model
from infermeter.runtime.catalog import BACKEND_PRECISIONS as BACKEND_PRECISIONS
from infermeter.runtime.compile import onnx_precision, quantization_data
from infermeter.runtime.compile.decoder_io import model_info
from infermeter.runtime.compile.drift import measure_drift
from infermeter.runtime.compile.metadata import BuildArgs, DriftReport, EngineRecord, engine_id_for
from infermeter.runtime.compile.profiles import plan_profiles
from infermeter.runtime.engine import EngineInfo, ShapeProfile
from infermeter.runtime.engine_store import EngineStore, RuntimeEnv, file_sha256, onnxruntime_env
from infermeter.runtime.tokenizer import load_tokenizer

Progress = Callable[[str, float], None]  # (what is happening, fraction done in 0..1)

SERVING_FILES = (
    "config.json",
    "chat_template.jinja",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a build reads its model: the directory (config, tokenizer) and the ONNX graph."""

    model_dir: Path
    onnx_path: Path
    name: str


def resolve_source(spec: str, models_dir: Path, name: str | None = None) -> ModelSource:
    """The model ``spec`` names: the built-in model, a model directory or an ONNX file."""
    if spec == BUILTIN_MODEL_NAME:
        model_dir = ensure_builtin_model(Path(models_dir) / BUILTIN_MODEL_NAME)
        return ModelSource(model_dir, model_dir / "model.onnx", name or BUILTIN_MODEL_NAME)
    path = Path(spec).expanduser()
    if path.is_dir():
        model_dir, onnx_path = path, path / "model.onnx"
    elif path.suffix == ".onnx" and path.is_file():
        model_dir, onnx_path = path.parent, path
    else:
        raise ConfigError(
            f"model {spec!r} is neither {BUILTIN_MODEL_NAME!r}, a model directory nor an .onnx "
            "file; give a directory exported by Optimum (model.onnx, config.json, tokenizer.json)"
        )
    if not onnx_path.is_file():
        raise ConfigError(
            f"model directory {model_dir} has no model.onnx; export it with "
            "`optimum-cli export onnx --task text-generation-with-past`"
        )
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"model directory {model_dir} has no config.json; add the model's config")
    return ModelSource(model_dir.resolve(), onnx_path.resolve(), name or _config_name(model_dir))


def model_context(source: ModelSource) -> int:
    """The model's context length (its position table), the default ``max_seq_len``."""
    return model_info(source.model_dir, source.onnx_path.name).max_seq_len


def source_spec(spec: str) -> str:
    """``spec`` as a build records it: the built-in name, or an absolute path."""
    return spec if spec == BUILTIN_MODEL_NAME else str(Path(spec).expanduser().resolve())


def _config_name(model_dir: Path) -> str:
    name = _read_config(model_dir).get("name")
    return str(name) if isinstance(name, str) and name else model_dir.resolve().name


def build_engine(
    args: BuildArgs,
    store: EngineStore,
    *,
    models_dir: Path,
    device: str = "cpu",
    progress: Progress | None = None,
    force: bool = False,
) -> EngineRecord:
    """Build the engine ``args`` describes into ``store``; returns its indexed record.

    ``device`` is where a torch engine will run ("cpu" or "cuda[:i]"); TensorRT builds for
    the first GPU. ``force`` serves an INT8 build that fails the economy gate. Raises
    ConfigError for an unsupported backend/precision or source.
    """
    say = progress or (lambda _what, _done: None)
    allowed = BACKEND_PRECISIONS.get(args.backend)
    if allowed is None:
        raise ConfigError(f"backend {args.backend!r} is unknown; use one of {', '.join(BACKEND_PRECISIONS)}")
    if args.precision not in allowed:
        raise ConfigError(
            f"backend {args.backend} builds {', '.join(p.value for p in allowed)}, not {args.precision.value}"
        )
    if args.calibration is not None and (args.backend, args.precision) != ("tensorrt", Precision.INT8):
        raise ConfigError(
            f"--calibration {args.calibration} applies to TensorRT's static Q/DQ INT8 only; "
            f"{args.backend} {args.precision.value} needs no calibration set; drop --calibration"
        )
    started = time.perf_counter()
    say("reading the model", 0.02)
    source = resolve_source(args.source, models_dir, args.model_name)
    info = model_info(source.model_dir, source.onnx_path.name)
    if args.max_seq_len > info.max_seq_len:
        raise ConfigError(
            f"--max-seq-len {args.max_seq_len} exceeds the context of "
            f"{source.name} ({info.max_seq_len} positions); give at most that"
        )
    profiles = plan_profiles(
        args.max_batch, args.max_seq_len, prefill_tokens=args.prefill_tokens, buckets=args.decode_buckets
    )
    env = _environment(args.backend, device)
    staging = store.staging()
    try:
        for name in SERVING_FILES:
            if (source.model_dir / name).is_file():
                shutil.copy2(source.model_dir / name, staging / name)
        work = staging / ".work"
        work.mkdir()
        graph, recipe, drift = _precision_graph(args, source, info, work, say, force)
        say(f"making the {args.backend} artifact", 0.75)
        artifact, options = _artifact(args, source, info, graph, staging, profiles, device, store.root, say)
        shutil.rmtree(work)
        options |= recipe
        options["dims"] = _dims(info, args.precision)
        say("hashing and indexing", 0.92)
        files = [artifact, *options.get("external_data", [])]
        sha = file_sha256(staging / f for f in files)
        record = EngineRecord(
            engine_id=engine_id_for(source.name, args.backend, args.precision, env.device, sha),
            model=source.name, backend=args.backend, precision=args.precision,
            artifact=artifact, sha256=sha, profiles=profiles, max_batch=args.max_batch,
            max_seq_len=args.max_seq_len, builder_versions=_versions(args.backend),
            runtime=env.runtime, runtime_version=env.version, device=env.device,
            device_name=env.device_name, compute_capability=env.compute_capability,
            built_at=datetime.now(UTC).isoformat(), source_sha256=file_sha256([source.onnx_path]),
            build_seconds=round(time.perf_counter() - started, 3), build=args, drift=drift,
            options=options,
        )  # fmt: skip
        stored = store.put(staging, record)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say("done", 1.0)
    return stored


def _environment(backend: str, device: str) -> RuntimeEnv:
    if backend == "tensorrt":
        from infermeter.runtime.compile.tensorrt_builder import tensorrt_env

        return tensorrt_env()
    if backend == "torch":
        from infermeter.runtime.torch_backend import torch_env

        return torch_env(device)
    return onnxruntime_env()


def _precision_graph(
    args: BuildArgs, source: ModelSource, info: EngineInfo, work: Path, say: Progress, force: bool
) -> tuple[Path, dict[str, Any], DriftReport | None]:
    """The ONNX graph in the engine's precision (the source itself for FP32 and torch)."""
    if args.precision in (Precision.FP32, Precision.BF16) or args.backend == "torch":
        return source.onnx_path, {"recipe": "source graph"}, None
    out = work / "model.onnx"
    if args.precision == Precision.FP16:
        say("converting to FP16 (LayerNorm, Softmax, reductions kept in FP32)", 0.2)
        return out, onnx_precision.convert_fp16(source.onnx_path, out), None
    if args.backend == "onnxruntime":
        return _weight_only_int8(source, info, out, say, force)
    if args.calibration is None:
        texts, origin = quantization_data.default_texts(), "infermeter module docstrings"
    else:
        texts, origin = quantization_data.read_texts(Path(args.calibration)), args.calibration
    tokenizer = load_tokenizer(source.model_dir)
    say(f"calibrating on {origin}", 0.15)
    feeds = onnx_precision.calibration_feeds(source.onnx_path, info, tokenizer, texts)
    say("quantizing to INT8 (Q/DQ)", 0.35)
    recipe = onnx_precision.quantize_int8(source.onnx_path, out, feeds)
    recipe["calibration"] = {"source": origin, "sha256": quantization_data.texts_sha256(texts)}
    say("measuring INT8 drift against FP32", 0.55)
    drift = measure_drift(source.onnx_path, out, info, tokenizer)
    return out, recipe, drift


def _weight_only_int8(
    source: ModelSource, info: EngineInfo, out: Path, say: Progress, force: bool
) -> tuple[Path, dict[str, Any], DriftReport]:
    """Weight-only int8 (``MatMulNBits``), then the economy gate against the FP32 graph."""
    from infermeter.runtime.compile.onnx_gate import gate_onnx_int8

    say("quantizing the weights to int8 (MatMulNBits)", 0.2)
    recipe = onnx_precision.quantize_weight_only_int8(source.onnx_path, out)
    say("gating INT8 on drift and speed against FP32", 0.5)
    tokenizer = load_tokenizer(source.model_dir)
    gate = gate_onnx_int8(source.model_dir, source.onnx_path, out, info, tokenizer, forced=force)
    return out, recipe | {"gate": gate.to_json()}, gate.drift


def _artifact(
    args: BuildArgs,
    source: ModelSource,
    info: EngineInfo,
    graph: Path,
    staging: Path,
    profiles: tuple[ShapeProfile, ...],
    device: str,
    store_root: Path,
    say: Progress,
) -> tuple[str, dict[str, Any]]:
    """Write the backend's artifact into ``staging``; returns its file name and options."""
    if args.backend == "torch":
        from infermeter.runtime.torch_backend import (
            WEIGHTS_FILE,
            decoder_config,
            save_weights,
            weights_from_onnx,
        )

        config = decoder_config(_read_config(source.model_dir))
        save_weights(weights_from_onnx(source.onnx_path, config), staging / WEIGHTS_FILE, args.precision)
        return WEIGHTS_FILE, {"device": device}
    if args.backend == "tensorrt":
        from infermeter.runtime.compile import tensorrt_builder
        from infermeter.runtime.trt_backend import PLAN_FILE

        cache = store_root / tensorrt_builder.TIMING_CACHE_FILE
        options = tensorrt_builder.build_plan(
            graph,
            staging / PLAN_FILE,
            profiles,
            info,
            timing_cache=cache,
            progress=lambda what: say(what, 0.8),
        )
        return PLAN_FILE, options
    externals = onnx_precision.external_data_files(graph)
    if graph == source.onnx_path:
        shutil.copy2(graph, staging / "model.onnx")
        for name in externals:
            shutil.copy2(graph.parent / name, staging / name)
    else:
        for path in graph.parent.glob("model.onnx*"):
            shutil.move(str(path), staging / path.name)
    return "model.onnx", {"external_data": externals} if externals else {}


def _read_config(model_dir: Path) -> dict[str, Any]:
    data = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _dims(info: EngineInfo, precision: Precision) -> dict[str, Any]:
    kv_bytes = 2 if precision in (Precision.FP16, Precision.BF16) else 4
    return {
        "num_layers": info.num_layers,
        "num_kv_heads": info.num_kv_heads,
        "head_dim": info.head_dim,
        "vocab_size": info.vocab_size,
        "eos_token_id": info.eos_token_id,
        "max_positions": info.max_seq_len,
        "kv_bytes_per_element": kv_bytes,
    }


def _versions(backend: str) -> dict[str, str]:
    import onnx
    import onnxruntime as ort  # type: ignore[import-untyped]  # ships no type information

    import infermeter

    versions = {
        "infermeter": infermeter.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": str(ort.__version__),
    }
    if backend == "tensorrt":
        from infermeter.runtime.compile.tensorrt_builder import import_tensorrt

        versions["tensorrt"] = str(import_tensorrt().__version__)
    if backend == "torch":
        from infermeter.runtime.torch_batching import import_torch

        versions["torch"] = str(import_torch().__version__)
    return versions


__all__ = [
    "BACKEND_PRECISIONS",
    "ModelSource",
    "Progress",
    "build_engine",
    "model_context",
    "resolve_source",
    "source_spec",
]
