"""Load the engines a service runs, from the engine index, building the defaults first.

At ``serve``:

1. The built-in model (and the ``--model-dir`` user model, if given) get an FP32 and, unless
   ``settings.int8`` is False, an INT8 ONNX Runtime engine: an indexed one when it is intact
   and current, else one built now (a few seconds). The INT8 build must pass the economy
   gate (drift and speed against FP32) to serve ``flex``; one that fails is indexed with its
   figures, logged, and ``flex`` runs on FP32. An INT8 record from before the gate (static
   Q/DQ) is not current: it is rebuilt. A ``--model-dir`` that is a ``.gguf`` file or a
   Hugging Face folder is imported on first start as ``infermeter models add`` would
   (``ensure_imported``), under the name ``serve_name`` gives it.
2. Every other indexed engine that this machine can run (right runtime version, device and
   intact artifact) is loaded too, newest per (model, backend, precision, device); one that
   is stale or foreign is skipped with a warning naming its rebuild command.
3. Each engine is loaded with its model's tokenizer and its record's profiles and limits;
   CUDA engines get a CUDA-event step timer on their own stream.
4. ``settings.device`` (``serve --device``) keeps one device's engines: ``cpu``, or
   ``cuda:N``, which also sets ``CUDA_VISIBLE_DEVICES`` to GPU N before any CUDA runtime
   loads, so the worker's "cuda" is that GPU (one worker per device, any number per host).
5. Models added with ``infermeter models add`` are served like any indexed engine: the
   ``transformers`` backend's engines run through ``HFEngine``, and every added model's
   chat requests use the model's own chat template (``TransformersTokenizer``). An economy
   engine that failed its drift/speed gate (``options.gate``) and was not forced is kept out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from infermeter.config import Settings, cuda_index
from infermeter.core.errors import ConfigError, StaleEngine
from infermeter.core.timing import NullTimer, StepTimer
from infermeter.core.types import Precision
from infermeter.runtime.builtin_model import BUILTIN_MODEL_NAME
from infermeter.runtime.compile.builder import (
    build_engine,
    model_context,
    resolve_source,
    source_spec,
)
from infermeter.runtime.compile.metadata import BuildArgs, EngineRecord
from infermeter.runtime.engine import Engine, LoadedEngine, Tokenizer
from infermeter.runtime.engine_store import EngineStore, RuntimeEnv, onnxruntime_env
from infermeter.runtime.ort_backend import OrtEngine
from infermeter.runtime.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

DEFAULT_BACKEND = "onnxruntime"


def pin_device(device: str, env: MutableMapping[str, str] | None = None) -> str:
    """ "cpu" or "cuda" (the engines' device) for ``--device``; for cuda:N, make GPU N the
    only one this process sees (N counts within an existing CUDA_VISIBLE_DEVICES)."""
    if device == "cpu":
        return "cpu"
    if env is None:
        env = os.environ
    index = cuda_index(device)
    assert index is not None  # load_settings validated it
    visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and index >= len(visible):
        raise ConfigError(
            f"--device {device}: CUDA_VISIBLE_DEVICES={','.join(visible)} shows {len(visible)} GPU(s); "
            f"pick cuda:0 … cuda:{len(visible) - 1} or unset CUDA_VISIBLE_DEVICES"
        )
    env["CUDA_VISIBLE_DEVICES"] = visible[index] if visible else str(index)
    return "cuda"


def load_default_engines(settings: Settings, timer_factory: Callable[[], StepTimer]) -> list[LoadedEngine]:
    """The engines ``serve`` runs, each with its tokenizer (see the module docstring)."""
    store = EngineStore(settings.home)
    try:
        device = None if settings.device is None else pin_device(settings.device)
        # the built-in ONNX Runtime engines run on the CPU: a GPU worker serves indexed engines only
        wanted = ensure_default_engines(store, settings) if device in (None, "cpu") else []
        records = wanted + [r for r in servable(store) if r.sha256 not in {w.sha256 for w in wanted}]
        for record in records:
            if (refusal := gate_refusal(record)) is not None:
                log.warning("not serving engine %s: %s", record.engine_id, refusal)
        records = [r for r in records if device is None or r.device == device]
        if not records:
            raise ConfigError(
                f"--device {settings.device}: the engine index has no engine for {device}; build one, "
                f"e.g. `infermeter engines build --backend torch --device cuda`, or list them with "
                "`infermeter engines list`"
            )
        records = _newest_per_kind([r for r in records if gate_refusal(r) is None])
        added = {m.name for m in store.models()}
        loaded = []
        for record in records:
            try:
                engine = load_engine(store, record, settings, timer_factory)
            except (StaleEngine, ConfigError) as exc:
                if record in wanted:
                    raise
                log.warning("not serving engine %s: %s", record.engine_id, exc.message)
                continue
            loaded.append(LoadedEngine(engine, _tokenizer(store, record, engine, record.model in added)))
        return loaded
    finally:
        store.close()


def _tokenizer(store: EngineStore, record: EngineRecord, engine: Engine, added: bool) -> Tokenizer:
    """The model's own tokenizer and chat template for added models, else ``load_tokenizer``."""
    engine_dir = store.path(record)
    if record.backend == "transformers" or (added and (engine_dir / "tokenizer_config.json").is_file()):
        from infermeter.runtime.hf_tokenizer import TransformersTokenizer

        return TransformersTokenizer.from_dir(engine_dir, vocab_size=engine.info.vocab_size)
    return load_tokenizer(engine_dir)


def gate_refusal(record: EngineRecord) -> str | None:
    """Why the economy gate keeps ``record`` out of serving, or None if it may serve."""
    gate = record.options.get("gate")
    if not gate or gate.get("passed") or gate.get("forced"):
        return None
    return "; ".join(gate.get("reasons") or ["failed the economy gate"])


def ensure_default_engines(store: EngineStore, settings: Settings) -> list[EngineRecord]:
    """FP32 (+ INT8) ONNX Runtime engines of the built-in and ``--model-dir`` models."""
    precisions = [Precision.FP32] + ([Precision.INT8] if settings.int8 else [])
    # the built-in model under another name (settings.model) is built with --name
    rename = settings.model if settings.model != BUILTIN_MODEL_NAME else None
    sources: list[tuple[str, str | None]] = [(BUILTIN_MODEL_NAME, rename)]
    records = []
    if settings.model_dir and _is_transformers_source(Path(settings.model_dir).expanduser()):
        records += ensure_imported(store, Path(settings.model_dir), settings)
    elif settings.model_dir:
        sources.append((source_spec(settings.model_dir), None))
    env = onnxruntime_env()
    for spec, name in sources:
        source = resolve_source(spec, settings.models_dir, name)
        for precision in precisions:
            args = BuildArgs(
                spec, DEFAULT_BACKEND, precision, settings.max_batch, model_context(source), model_name=name
            )
            records.append(_current(store, args, source.name, env) or _build(store, args, settings))
    return records


def _is_transformers_source(path: Path) -> bool:
    """A ``.gguf`` file or a Hugging Face folder (config.json + safetensors, no model.onnx)."""
    if path.is_file():
        return path.suffix == ".gguf"
    return path.is_dir() and not (path / "model.onnx").is_file() and any(path.glob("*.safetensors"))


def serve_name(source: Path) -> str:
    """The model name ``serve --model-dir SOURCE`` gives an imported model: the file's stem
    or the folder's name, with characters a model name may not hold replaced by '-'."""
    stem = source.stem if source.suffix == ".gguf" else source.name
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem).lstrip(".")
    return name or "model"


def ensure_imported(store: EngineStore, source: Path, settings: Settings) -> list[EngineRecord]:
    """The transformers engines of ``serve --model-dir SOURCE`` (a .gguf or an HF folder).

    The first start imports SOURCE exactly as ``infermeter models add NAME SOURCE`` does (NAME
    from ``serve_name``); later starts reuse the indexed import while its engines are intact.
    """
    from infermeter.runtime.model_import import import_model

    source = source.expanduser().resolve()
    name = serve_name(source)
    model = next((m for m in store.models() if m.name == name), None)
    if model is not None and model.source != str(source):
        raise ConfigError(
            f"--model-dir {source}: model name {name!r} was already added from {model.source}; "
            f"add this one under another name with `infermeter models add NAME {source}`"
        )
    if model is not None:
        engines = [r for r in store.list(name) if r.backend == "transformers"]
        current = [r for r in engines if _intact(store, r)]
        if current and len(current) == len(engines):
            return _newest_per_kind(current)
    log.info("importing %s as model %s (as `infermeter models add` does)", source, name)
    from infermeter.metering.timers import CpuStepTimer

    result = import_model(
        name, source, store, timer_factory=lambda _stream: CpuStepTimer(), max_batch=settings.max_batch
    )
    return list(result.engines)


def _intact(store: EngineStore, record: EngineRecord) -> bool:
    env = runtime_env_for(record)
    if env is None:
        return False
    try:
        store.check(record, env)
    except StaleEngine as exc:
        log.warning("re-importing: %s", exc.message)
        return False
    return True


def _current(store: EngineStore, args: BuildArgs, model: str, env: RuntimeEnv) -> EngineRecord | None:
    """The newest indexed engine built with exactly ``args`` that is intact and current."""
    for record in store.list(model):
        if (record.backend, record.precision, record.build) != (args.backend, args.precision, args):
            continue
        if record.precision == Precision.INT8 and "gate" not in record.options:
            log.warning(
                "rebuilding %s: built by the static Q/DQ recipe, before the economy gate",
                record.engine_id,
            )
            return None
        try:
            store.check(record, env)
        except StaleEngine as exc:
            log.warning("rebuilding: %s", exc.message)
            return None
        return record
    return None


def _build(store: EngineStore, args: BuildArgs, settings: Settings) -> EngineRecord:
    log.info("building the %s %s engine of %s", args.backend, args.precision.value, args.source)
    return build_engine(args, store, models_dir=settings.models_dir)


def servable(store: EngineStore) -> list[EngineRecord]:
    """Indexed engines whose runtime this process has (stale ones are filtered at load)."""
    return [r for r in store.list() if runtime_env_for(r) is not None]


def _newest_per_kind(records: list[EngineRecord]) -> list[EngineRecord]:
    seen: set[tuple[str, str, Precision, str]] = set()
    out = []
    for record in records:  # wanted first, then the index newest first
        kind = (record.model, record.backend, record.precision, record.device)
        if kind not in seen:
            seen.add(kind)
            out.append(record)
    return out


def runtime_env_for(record: EngineRecord) -> RuntimeEnv | None:
    """The runtime environment for ``record``'s backend here, or None if it is unavailable."""
    try:
        if record.backend == "onnxruntime":
            return onnxruntime_env()
        if record.backend in ("torch", "transformers"):
            from infermeter.runtime.torch_backend import torch_env

            return torch_env("cuda" if record.device == "cuda" else "cpu")
        if record.backend == "tensorrt":
            from infermeter.runtime.compile.tensorrt_builder import tensorrt_env

            return tensorrt_env()
    except ConfigError as exc:
        log.info("engine %s cannot run here: %s", record.engine_id, exc.message)
    return None


def engine_status(store: EngineStore, record: EngineRecord) -> str:
    """ "ok", "stale: <why and how to rebuild>" or "foreign: <what it needs>"."""
    env = runtime_env_for(record)
    if env is None:
        return f"foreign: needs {record.runtime} on {record.device}"
    refusal = gate_refusal(record)
    if refusal is not None:
        return f"refused: {refusal}; rebuild with --force to serve it anyway"
    try:
        store.check(record, env)
    except StaleEngine as exc:
        return "stale: " + exc.message
    return "ok"


def load_engine(
    store: EngineStore,
    record: EngineRecord,
    settings: Settings,
    timer_factory: Callable[[], StepTimer],
) -> Engine:
    """Check ``record`` against this machine and load it; StaleEngine names the rebuild."""
    env = runtime_env_for(record)
    if env is None:
        raise StaleEngine(
            f"engine {record.engine_id} needs {record.runtime} on {record.device}, "
            f"which this machine lacks; rebuild it with "
            f"`{replace(record.build, backend=DEFAULT_BACKEND).command()}`"
        )
    engine_dir = store.check(record, env)
    device_class = _device_class(record, env)

    def timer_for(stream: Any) -> StepTimer:
        if stream is None:
            return timer_factory()
        if not settings.metering:
            return NullTimer()
        from infermeter.metering.cuda_timer import CudaEventTimer

        return CudaEventTimer(stream)

    engine: Engine
    if record.backend == "onnxruntime":
        engine = OrtEngine.load(
            engine_dir,
            precision=record.precision,
            timer=timer_factory(),
            intra_op_threads=settings.intra_op_threads or None,
            max_batch=record.max_batch,
            engine_id=record.engine_id,
            model_name=record.model,
            model_file=record.artifact,
        )
    elif record.backend == "transformers":
        from infermeter.runtime.hf_backend import HFEngine

        if settings.intra_op_threads:
            from infermeter.runtime.torch_batching import import_torch

            import_torch().set_num_threads(settings.intra_op_threads)
        engine = HFEngine.load(
            engine_dir,
            precision=record.precision,
            timer_factory=timer_for,
            device="cuda" if record.device == "cuda" else "cpu",
            max_batch=record.max_batch,
            max_seq_len=record.max_seq_len,
            engine_id=record.engine_id,
            model_name=record.model,
            device_class=device_class,
        )
    elif record.backend == "torch":
        from infermeter.runtime.torch_backend import TorchEngine

        engine = TorchEngine.load(
            engine_dir,
            precision=record.precision,
            timer_factory=timer_for,
            device="cuda" if record.device == "cuda" else "cpu",
            max_batch=record.max_batch,
            engine_id=record.engine_id,
            model_name=record.model,
            device_class=device_class,
        )
    else:
        from infermeter.runtime.trt_backend import TrtEngine

        engine = TrtEngine.load(
            engine_dir,
            precision=record.precision,
            timer_factory=timer_for,
            dims=record.options["dims"],
            profiles=record.profiles,
            model=record.model,
            engine_id=record.engine_id,
            max_batch=record.max_batch,
            max_seq_len=record.max_seq_len,
            device_class=device_class,
            rebuild_hint=f"rebuild it with `{record.build.command()}`",
        )
    engine.info = replace(
        engine.info, profiles=record.profiles, device_class=device_class,
        max_batch=min(record.max_batch, engine.info.max_batch),
        max_seq_len=min(record.max_seq_len, engine.info.max_seq_len),
        extra={**engine.info.extra, "sha256": record.sha256, "cost_model": dict(record.cost_model),
               "drift": None if record.drift is None else record.drift.to_json()},
    )  # fmt: skip
    return engine


def _device_class(record: EngineRecord, env: RuntimeEnv) -> str:
    """The RU table's class for the engine's device; ConfigError for an unpriced GPU."""
    if env.device == "cpu":
        return "cpu"
    from infermeter.metering.ru import device_class_for

    device_class = device_class_for(env.device_name)
    if device_class is None:
        raise ConfigError(
            f"GPU {env.device_name!r} has no RU factors; run `infermeter calibrate` "
            "on it or serve its engines on a priced GPU"
        )
    return device_class


__all__ = [
    "engine_status",
    "ensure_default_engines",
    "ensure_imported",
    "gate_refusal",
    "load_default_engines",
    "load_engine",
    "runtime_env_for",
    "servable",
    "serve_name",
]
