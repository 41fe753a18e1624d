"""TensorRT 11 plan builder: a serialized plan from the precision-specific ONNX graph.

Written against the TensorRT 10.12+/11 Python API (NVIDIA's TensorRT API reference):
the network is strongly typed (precision comes from the graph's dtypes: no
precision builder flags, no calibrators), one optimization profile per shape regime
(``profiles.tensor_ranges``), a workspace memory-pool limit, a timing cache kept across
builds, detailed profiling verbosity for the engine inspector. Build failures come back as
``None`` from TensorRT with the reason only in the logger, so the logger records errors and
the exception carries them.

``tensorrt`` is imported only when a plan is built or loaded; without it
``import_tensorrt`` raises ConfigError naming ``pip install 'infermeter[tensorrt]'``.
Nothing here has run against a real TensorRT (the development machines have none); the
plan/profile inputs it consumes are tested on CPU.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from infermeter.core.errors import ConfigError, EngineError
from infermeter.runtime.compile.profiles import tensor_ranges
from infermeter.runtime.engine import EngineInfo, ShapeProfile
from infermeter.runtime.engine_store import RuntimeEnv

DEFAULT_WORKSPACE_BYTES = 4 << 30
TIMING_CACHE_FILE = "tensorrt-timing.cache"
INSTALL_HINT = "pip install 'infermeter[tensorrt,torch]' on a machine with an NVIDIA GPU"


def import_tensorrt() -> Any:
    """``tensorrt``, or a ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise ConfigError(f"TensorRT is not installed: {INSTALL_HINT}") from exc


def tensorrt_available() -> str | None:
    """None when TensorRT and a CUDA device are usable here, else the reason they are not."""
    try:
        importlib.import_module("tensorrt")
    except ImportError:
        return f"TensorRT is not installed ({INSTALL_HINT})"
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return "PyTorch is not installed (pip install 'infermeter[torch]')"
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None


def tensorrt_env(device_index: int = 0) -> RuntimeEnv:
    """TensorRT's version and the GPU a plan would be built for or run on (not portable)."""
    trt = import_tensorrt()
    from infermeter.runtime.torch_batching import import_torch

    torch = import_torch()
    if not torch.cuda.is_available():
        raise ConfigError(
            "TensorRT engines need a CUDA device, and none is visible; "
            "use --backend onnxruntime on this machine"
        )
    major, minor = torch.cuda.get_device_capability(device_index)
    return RuntimeEnv(
        "tensorrt",
        str(trt.__version__),
        "cuda",
        torch.cuda.get_device_name(device_index),
        f"{major}.{minor}",
        portable=False,
    )


def recording_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that keeps error messages (TensorRT returns None, not reasons)."""

    class RecordingLogger(trt.ILogger):  # type: ignore[misc]  # runtime base
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)

    return RecordingLogger()


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    profiles: Sequence[ShapeProfile],
    info: EngineInfo,
    *,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    timing_cache: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Parse ``onnx_path``, build one profile per entry of ``profiles``, write the plan.

    ``info`` gives the decoder's layer/head sizes for the past inputs. Returns the build
    options for the engine's metadata. Raises EngineError with TensorRT's own messages when
    parsing or building fails.
    """
    trt = import_tensorrt()
    say = progress or (lambda _: None)
    logger = recording_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # required on 10.x
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    say("parsing ONNX")
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {'; '.join(errors) or logger.errors}")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    for shape_profile in profiles:
        ranges = tensor_ranges(
            shape_profile,
            num_layers=info.num_layers,
            num_kv_heads=info.num_kv_heads,
            head_dim=info.head_dim,
            position_ids="position_ids" in inputs,
        )
        missing = [name for name in inputs if name not in ranges]
        if missing:
            raise EngineError(
                f"{onnx_path} has inputs {missing} outside the decoder layout infermeter builds "
                "profiles for (input_ids, attention_mask, position_ids, past_key_values.*)"
            )
        profile = builder.create_optimization_profile()
        for name in inputs:
            low, opt, high = ranges[name]
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    say(f"building {len(profiles)} optimization profiles")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT could not build {onnx_path}: {'; '.join(logger.errors)}")
    plan_path.write_bytes(memoryview(plan))
    if timing_cache is not None:
        timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return {
        "workspace_bytes": workspace_bytes,
        "strongly_typed": True,
        "optimization_profiles": len(profiles),
        "timing_cache": None if timing_cache is None else str(timing_cache),
    }


__all__ = [
    "DEFAULT_WORKSPACE_BYTES",
    "INSTALL_HINT",
    "TIMING_CACHE_FILE",
    "build_plan",
    "import_tensorrt",
    "recording_logger",
    "tensorrt_available",
    "tensorrt_env",
]
