"""``infermeter models add NAME SOURCE``: import a model and build its default engines.

SOURCE is one of:

- a Hugging Face folder (config.json, ``*.safetensors``, tokenizer.json): its files are
  copied into ``<home>/models/NAME``;
- a ``.gguf`` file: dequantized to FP32 through ``transformers``' GGUF loader
  (``from_pretrained(dir, gguf_file=...)``) and saved as a Hugging Face folder, together with
  the tokenizer and chat template the GGUF carries;
- an Optimum ONNX export (a folder with model.onnx): built by the ONNX Runtime builder as FP32
  and weight-only INT8 (``MatMulNBits``), the latter gated like the transformers one.

For an HF or GGUF model the default engines of this machine are then built on the
``transformers`` backend: on the CPU FP32 and the economy INT8 engine (weight-only int8),
the latter gated on drift and speed against FP32 (``compile.economy_gate``); on CUDA FP16
and BF16. An engine's artifact is its ``engine.json`` (backend, precision, recipe) plus
the model's weight files, so each precision hashes to its own sha256; the weights are
hard-linked from the model folder, not copied, where the filesystem allows.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infermeter.core.errors import ConfigError
from infermeter.core.types import Precision
from infermeter.runtime.builtin_model import BUILTIN_MODEL_NAME
from infermeter.runtime.compile import economy_gate
from infermeter.runtime.compile.drift import DRIFT_PROMPTS
from infermeter.runtime.compile.metadata import BuildArgs, EngineRecord, engine_id_for
from infermeter.runtime.compile.profiles import plan_profiles
from infermeter.runtime.engine_store import EngineStore, ModelRecord, file_sha256
from infermeter.runtime.hf_backend import BACKEND, HFEngine, check_precision
from infermeter.runtime.torch_batching import TimerFactory, import_torch

ENGINE_FILE = "engine.json"
Progress = Callable[[str], None]
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ImportResult:
    model: ModelRecord
    engines: tuple[EngineRecord, ...]


def source_kind(source: Path) -> str:
    """ "gguf", "onnx" or "hf" for a SOURCE path; ConfigError naming what a source needs."""
    if source.is_file() and source.suffix == ".gguf":
        return "gguf"
    if source.is_dir() and (source / "model.onnx").is_file():
        return "onnx"
    if source.is_dir() and (source / "config.json").is_file() and any(source.glob("*.safetensors")):
        return "hf"
    raise ConfigError(
        f"SOURCE {str(source)!r} is neither a .gguf file, a Hugging Face folder (config.json + "
        "*.safetensors + tokenizer.json) nor an Optimum ONNX export (a folder with model.onnx); "
        "give one of those"
    )


def default_precisions(device: str) -> tuple[Precision, ...]:
    """The engines ``models add`` builds: FP32 + economy INT8 on CPU, FP16 + BF16 on CUDA."""
    if device.startswith("cuda"):
        return (Precision.FP16, Precision.BF16)
    return (Precision.FP32, Precision.INT8)


def import_model(
    name: str,
    source: Path,
    store: EngineStore,
    *,
    timer_factory: TimerFactory,
    device: str = "cpu",
    max_batch: int = 16,
    max_seq_len: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Import ``source`` as model ``name`` and build its default engines (module docstring)."""
    say = progress or (lambda _what: None)
    _check_name(name)
    source = Path(source).expanduser().resolve()
    if not source.exists():
        raise ConfigError(f"SOURCE {str(source)!r} does not exist; give a .gguf file or a model folder")
    kind = source_kind(source)
    if kind == "onnx":
        return _import_onnx(name, source, store, max_batch=max_batch, force=force, say=say)
    target = store.model_root(name)
    say(f"importing {source.name} ({kind})")
    info = _normalize(kind, source, target)
    record = store.put_model(ModelRecord(name, kind, str(source), str(target), _now(), info))
    engines: list[EngineRecord] = []
    for precision in default_precisions(device):
        say(f"building the {BACKEND} {precision.value} engine on {device}")
        engines.append(
            build_hf_engine(
                store, target, name, precision, device=device, max_batch=max_batch,
                max_seq_len=max_seq_len, timer_factory=timer_factory, force=force,
                fp32=engines[0] if precision == Precision.INT8 and engines else None,
            )
        )  # fmt: skip
    return ImportResult(record, tuple(engines))


def build_hf_engine(
    store: EngineStore,
    model_dir: Path,
    name: str,
    precision: Precision,
    *,
    device: str,
    max_batch: int,
    max_seq_len: int | None,
    timer_factory: TimerFactory,
    force: bool = False,
    fp32: EngineRecord | None = None,
) -> EngineRecord:
    """Stage, gate (INT8 against ``fp32``), hash and index one transformers engine."""
    check_precision(precision, device)
    torch = import_torch()
    started = time.perf_counter()
    engine = HFEngine.load(
        model_dir, precision=precision, timer_factory=timer_factory, device=device,
        max_batch=max_batch, max_seq_len=max_seq_len, model_name=name,
    )  # fmt: skip
    info = engine.info
    options: dict[str, Any] = {"device": device, "architecture": info.extra["architecture"]}
    gate = None
    if precision == Precision.INT8:
        gate = _gate(engine, model_dir, name, device, timer_factory, force)
        options |= {"recipe": info.extra["recipe"], "gate": gate.to_json()}
    engine.close()
    staging = store.staging()
    try:
        weights = _link_model(model_dir, staging)
        spec = {"backend": BACKEND, "precision": precision.value, "model": name,
                "recipe": options.get("recipe", "weights as saved, cast at load")}  # fmt: skip
        (staging / ENGINE_FILE).write_text(
            json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        options["external_data"] = weights
        sha = file_sha256([staging / ENGINE_FILE, *(staging / w for w in weights)])
        dev = "cuda" if device.startswith("cuda") else "cpu"
        device_name, capability = _device_name(torch, device)
        record = EngineRecord(
            engine_id=engine_id_for(name, BACKEND, precision, dev, sha), model=name,
            backend=BACKEND, precision=precision, artifact=ENGINE_FILE, sha256=sha,
            profiles=plan_profiles(max_batch, info.max_seq_len), max_batch=max_batch,
            max_seq_len=info.max_seq_len,
            builder_versions=_versions(torch), runtime="torch", runtime_version=str(torch.__version__),
            device=dev, device_name=device_name, compute_capability=capability,
            built_at=_now(), build_seconds=round(time.perf_counter() - started, 3),
            source_sha256=file_sha256([model_dir / w for w in weights]),
            build=BuildArgs(str(model_dir), BACKEND, precision, max_batch, info.max_seq_len, model_name=name),
            drift=None if gate is None else gate.drift, options=options,
        )  # fmt: skip
        return store.put(staging, record)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _gate(
    candidate: HFEngine, model_dir: Path, name: str, device: str, timer_factory: TimerFactory, force: bool
) -> economy_gate.GateReport:
    """Drift and speed of ``candidate`` against a freshly loaded FP32 sibling."""
    from infermeter.runtime.hf_tokenizer import TransformersTokenizer

    reference = HFEngine.load(
        model_dir, precision=Precision.FP32, timer_factory=timer_factory, device=device, model_name=name
    )
    try:
        tokenizer = TransformersTokenizer.from_dir(model_dir, vocab_size=reference.info.vocab_size)
        agreement, max_diff, positions = economy_gate.measure_drift(
            reference, _scorer(reference), _scorer(candidate), tokenizer
        )
        fp32_ms, ms = economy_gate.decode_ms_per_token([reference, candidate], tokenizer)
    finally:
        reference.close()
    return economy_gate.decide(
        agreement, max_diff, ms, fp32_ms, prompts=len(DRIFT_PROMPTS),
        positions=positions, forced=force,
    )  # fmt: skip


def _scorer(engine: HFEngine) -> economy_gate.Scorer:
    torch = engine.torch

    def score(ids: Any) -> Any:
        with torch.inference_mode():
            x = torch.tensor([list(ids)], dtype=torch.long, device=engine.device)
            return engine.model(input_ids=x, use_cache=False).logits[0].float().cpu().numpy()

    return score


def _normalize(kind: str, source: Path, target: Path) -> dict[str, Any]:
    """Write the model into ``target`` as a Hugging Face folder; returns what was found."""
    staging = target.with_name(f".{target.name}.importing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if kind == "gguf":
            _from_gguf(source, staging)
        else:
            wanted = {*_TOKENIZER_FILES, "config.json", "model.safetensors.index.json"}
            for path in source.iterdir():
                if path.is_file() and (path.suffix == ".safetensors" or path.name in wanted):
                    shutil.copy2(path, staging / path.name)
        if not (staging / "tokenizer.json").is_file():
            raise ConfigError(
                f"{source} has no tokenizer.json (or a GGUF tokenizer transformers can convert); "
                "add the model's tokenizer.json"
            )
        config = json.loads((staging / "config.json").read_text(encoding="utf-8"))
        tok_config = _read_json(staging / "tokenizer_config.json")
        has_template = (staging / "chat_template.jinja").is_file() or bool(tok_config.get("chat_template"))
        info = {"architectures": config.get("architectures", []), "model_type": config.get("model_type"),
                "chat_template": has_template}  # fmt: skip
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        return info
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _from_gguf(source: Path, out: Path) -> None:
    """Dequantize ``source`` through transformers and save it (FP32 safetensors + tokenizer)."""
    torch = import_torch()
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ConfigError("importing a .gguf needs transformers: pip install 'infermeter[hf]'") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(source.parent), gguf_file=source.name, dtype=torch.float32
        )
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ConfigError(
            f"transformers cannot read {source}: {exc}; give a GGUF of an architecture "
            "transformers' GGUF loader supports (llama, qwen2, mistral, gemma, phi3, gpt2, ...)"
        ) from exc
    # The weights are dequantized FP32 tensors now; drop the marker that forbids saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def _import_onnx(
    name: str, source: Path, store: EngineStore, *, max_batch: int, force: bool, say: Progress
) -> ImportResult:
    from infermeter.runtime.compile.builder import build_engine, model_context, resolve_source

    model_source = resolve_source(str(source), store.home / "models", name)
    record = store.put_model(
        ModelRecord(name, "onnx", str(source), str(source), _now(), {"chat_template": _onnx_template(source)})
    )
    engines = []
    for precision in (Precision.FP32, Precision.INT8):
        say(f"building the onnxruntime {precision.value} engine")
        args = BuildArgs(
            str(source), "onnxruntime", precision, max_batch, model_context(model_source), model_name=name
        )
        engines.append(build_engine(args, store, models_dir=store.home / "models", force=force))
    return ImportResult(record, tuple(engines))


def _onnx_template(source: Path) -> bool:
    return (source / "chat_template.jinja").is_file() or bool(
        _read_json(source / "tokenizer_config.json").get("chat_template")
    )


def _link_model(model_dir: Path, staging: Path) -> list[str]:
    """Hard-link (else copy) the model's files into ``staging``; returns the weight files."""
    weights = []
    for path in sorted(model_dir.iterdir()):
        if not path.is_file():
            continue
        try:
            os.link(path, staging / path.name)
        except OSError:
            shutil.copy2(path, staging / path.name)
        if path.suffix == ".safetensors":
            weights.append(path.name)
    return weights


def _check_name(name: str) -> None:
    ok = name and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")
    if not ok or name == BUILTIN_MODEL_NAME:
        raise ConfigError(
            f"model NAME {name!r} is not allowed; use letters, digits, '-', '_' or '.', not "
            f"starting with '.', and not the built-in model's name {BUILTIN_MODEL_NAME!r}"
        )


def _device_name(torch: Any, device: str) -> tuple[str, str | None]:
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        return str(torch.cuda.get_device_name(index)), f"{major}.{minor}"
    from infermeter.runtime.engine_store import cpu_name

    return cpu_name(), None


def _versions(torch: Any) -> dict[str, str]:
    import transformers

    import infermeter

    return {"infermeter": infermeter.__version__, "torch": str(torch.__version__),
            "transformers": str(transformers.__version__)}  # fmt: skip


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _now() -> str:
    return datetime.now(UTC).isoformat()


__all__ = [
    "ENGINE_FILE",
    "ImportResult",
    "build_hf_engine",
    "default_precisions",
    "import_model",
    "source_kind",
]
