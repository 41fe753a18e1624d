"""``infermeter engines build|list|show|bench``: compiled engines and their index."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from infermeter.config import Settings, load_settings
from infermeter.core.errors import ConfigError
from infermeter.core.types import Precision
from infermeter.runtime.catalog import BACKEND_PRECISIONS, BUILTIN_MODEL_NAME

# The engine modules (numpy, onnx, ONNX Runtime) are imported inside the commands that use
# them, so building the parser for `--help` or another command stays cheap.
from .commands import require_database

# Piped output gets 120 columns rather than rich's 80: engine ids are long.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings({"home": args.home})


def _buckets(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ConfigError(
            f"--decode-buckets {text!r} is not a comma-separated list of past lengths; use e.g. 128,256,512"
        ) from None


def cmd_build(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from infermeter.runtime.compile.builder import build_engine, model_context, resolve_source, source_spec
    from infermeter.runtime.compile.metadata import BuildArgs
    from infermeter.runtime.engine_store import EngineStore

    settings = _settings(args)
    spec = source_spec(args.source)
    source = resolve_source(spec, settings.models_dir, args.name)
    build = BuildArgs(
        source=spec, backend=args.backend, precision=Precision(args.precision),
        max_batch=args.max_batch or settings.max_batch,
        max_seq_len=args.max_seq_len or model_context(source),
        prefill_tokens=args.prefill_tokens, decode_buckets=_buckets(args.decode_buckets),
        calibration=None if args.calibration is None else source_spec(args.calibration),
        model_name=args.name,
    )  # fmt: skip
    store = EngineStore(settings.home)
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bar:
            task = bar.add_task(f"building {source.name} {build.backend}/{build.precision}", total=1.0)

            def progress(what: str, done: float) -> None:
                bar.update(task, completed=done, description=what)

            record = build_engine(
                build, store, models_dir=settings.models_dir, device=args.device, progress=progress,
                force=args.force,
            )  # fmt: skip
    finally:
        store.close()
    if args.json:
        _emit(record.to_json())
        return 0
    out.print(
        f"built [bold]{record.engine_id}[/] in {record.build_seconds:.2f} s (sha256 {record.short_sha})"
    )
    if record.drift is not None:
        out.print(
            f"INT8 drift vs FP32: max |Δlogit| {record.drift.max_logit_diff:.4f}, greedy "
            f"agreement {record.drift.token_agreement:.1%} over {record.drift.positions} "
            "positions"
        )
    gate = record.options.get("gate")
    if gate:
        verdict = "passed" if gate["passed"] else "forced" if gate["forced"] else "refused"
        reasons = "" if gate["passed"] else f" ({'; '.join(gate['reasons'])})"
        out.print(
            f"economy gate: {verdict}{reasons}; {gate['ms_per_token']:.3f} vs FP32 "
            f"{gate['fp32_ms_per_token']:.3f} ms/token"
        )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from infermeter.app.engines import engine_status
    from infermeter.runtime.engine_store import EngineStore

    settings = _settings(args)
    require_database(settings)
    store = EngineStore(settings.home)
    try:
        rows = [(r, engine_status(store, r)) for r in store.list(args.model)]
    finally:
        store.close()
    if args.json:
        _emit([{**r.to_json(), "status": status} for r, status in rows])
        return 0
    table = Table(
        "engine: model-backend-precision-device-sha", "batch", "ctx", "int8 agree", "built", "status"
    )
    table.columns[0].no_wrap = True
    for r, status in rows:
        agreement = "" if r.drift is None else f"{r.drift.token_agreement:.1%}"
        table.add_row(
            r.engine_id,
            str(r.max_batch),
            str(r.max_seq_len),
            agreement,
            r.built_at[:10],
            status.split(":")[0],
        )
    out.print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from infermeter.app.engines import engine_status
    from infermeter.runtime.engine_store import EngineStore

    settings = _settings(args)
    require_database(settings)
    store = EngineStore(settings.home)
    try:
        record = store.get(args.engine)
        status = engine_status(store, record)
        path = store.path(record)
    finally:
        store.close()
    _emit({**record.to_json(), "path": str(path), "status": status, "rebuild": record.build.command()})
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from infermeter.app.engines import load_engine, servable
    from infermeter.metering.timers import CpuStepTimer
    from infermeter.runtime.compile.bench import bench_engine
    from infermeter.runtime.engine_store import EngineStore, cpu_name

    settings = load_settings({"home": args.home, "intra_op_threads": args.threads})
    store = EngineStore(settings.home)
    try:
        records = [store.get(ref) for ref in args.engines] or servable(store)
        results = []
        for record in records:
            engine = load_engine(store, record, settings, CpuStepTimer)
            try:
                results.append(
                    bench_engine(
                        engine,
                        prompt_tokens=args.prompt_tokens,
                        decode_steps=args.decode_steps,
                        batch=args.batch,
                        rounds=args.rounds,
                    )
                )
            finally:
                engine.close()
    finally:
        store.close()
    machine = f"{cpu_name()}, {_cores()} cores, Python {platform.python_version()}"
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    if args.json:
        _emit(
            {
                "machine": machine,
                "date": when,
                "intra_op_threads": settings.intra_op_threads,
                "engines": [b.to_json() for b in results],
            }
        )
        return 0
    table = Table(
        "engine",
        "prefill tok/s",
        "prefill ms/tok",
        "decode tok/s (b=1)",
        "decode ms/tok (b=1)",
        "decode tok/s (batch)",
        "decode ms/tok (batch)",
    )
    table.columns[0].no_wrap = True
    for b in results:
        table.add_row(
            b.engine_id,
            f"{b.prefill_tokens_per_s:,.0f}",
            f"{b.prefill_ms_per_token:.4f}",
            f"{b.decode_tokens_per_s:,.0f}",
            f"{b.decode_ms_per_token:.3f}",
            f"{b.batch_decode_tokens_per_s:,.0f} (b={b.batch})",
            f"{b.batch_decode_ms_per_token:.3f}",
        )
    out.print(table)
    threads = settings.intra_op_threads or "all"
    out.print(
        f"{machine}; {when}; ONNX Runtime intra-op threads: {threads}; device time from "
        "each engine's step timer"
    )
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def register(sub: Any) -> None:
    engines = sub.add_parser("engines", help="build, list and show compiled engines").add_subparsers(
        dest="engines_command", required=True, metavar="ACTION"
    )

    p = engines.add_parser("build", help="build an engine from a model directory or ONNX file")
    p.add_argument(
        "source",
        nargs="?",
        default=BUILTIN_MODEL_NAME,
        help=f"model directory, .onnx file, or {BUILTIN_MODEL_NAME!r} (the default)",
    )
    p.add_argument("--backend", choices=list(BACKEND_PRECISIONS), default="onnxruntime")
    p.add_argument("--precision", choices=[p.value for p in Precision], default="fp32")
    p.add_argument("--max-batch", type=int, dest="max_batch", help="default: serve's max batch")
    p.add_argument(
        "--max-seq-len", type=int, dest="max_seq_len", help="context per sequence (default: the model's)"
    )
    p.add_argument(
        "--prefill-tokens",
        type=int,
        dest="prefill_tokens",
        help="largest prefill chunk of the prefill profile (default: the context)",
    )
    p.add_argument(
        "--decode-buckets",
        dest="decode_buckets",
        help="decode profiles' past-length bounds, e.g. 128,256,512",
    )
    p.add_argument(
        "--calibration",
        help="INT8 calibration text (.txt paragraphs or .jsonl "
        "with a text field; default: infermeter's own docs)",
    )
    p.add_argument("--name", help="model name to serve it as (default: config.json name)")
    p.add_argument("--device", default="cpu", help="torch backend: cpu or cuda[:i]")
    p.add_argument(
        "--force", action="store_true", help="serve an INT8 engine even if it fails the economy gate"
    )
    p.add_argument("--json", action="store_true", help="print the metadata record")
    p.set_defaults(handler=cmd_build)

    p = engines.add_parser("list", help="list indexed engines and whether they can run here")
    p.add_argument("--model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_list)

    p = engines.add_parser("show", help="one engine's metadata (by engine id or sha256 prefix)")
    p.add_argument("engine")
    p.set_defaults(handler=cmd_show)

    p = engines.add_parser("bench", help="prefill/decode tokens/s and device ms per token")
    p.add_argument("engines", nargs="*", help="engine ids or sha256 prefixes (default: all)")
    p.add_argument("--prompt-tokens", type=int, default=128, dest="prompt_tokens")
    p.add_argument("--decode-steps", type=int, default=32, dest="decode_steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench)
