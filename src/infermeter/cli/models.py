"""``infermeter models add|list``: import Hugging Face, GGUF and ONNX models; list them.

``models add NAME SOURCE`` imports SOURCE (a Hugging Face folder, a ``.gguf`` file or an
Optimum ONNX export) as NAME and builds this machine's default engines for it; ``serve``
then serves it. Heavy imports (torch, transformers) happen inside the commands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from infermeter.config import load_settings

out = Console(highlight=False)


def cmd_add(args: argparse.Namespace) -> int:
    from infermeter.app.engines import engine_status
    from infermeter.metering.timers import CpuStepTimer
    from infermeter.runtime.engine_store import EngineStore
    from infermeter.runtime.model_import import import_model

    settings = load_settings({"home": args.home})
    if args.max_batch is not None and args.max_batch < 1:
        from infermeter.core.errors import ConfigError

        raise ConfigError(f"--max-batch {args.max_batch} must be at least 1; give e.g. 16")
    if settings.intra_op_threads:
        from infermeter.runtime.torch_batching import import_torch

        import_torch().set_num_threads(settings.intra_op_threads)
    store = EngineStore(settings.home)
    err = Console(stderr=True, highlight=False)
    try:
        result = import_model(
            args.name, Path(args.source), store, timer_factory=lambda _stream: CpuStepTimer(),
            device=args.device, max_batch=args.max_batch or settings.max_batch,
            max_seq_len=args.max_seq_len, force=args.force,
            progress=lambda what: err.print(f"[dim]{what}[/]"),
        )  # fmt: skip
        statuses = [engine_status(store, r) for r in result.engines]
    finally:
        store.close()
    if args.json:
        pairs = zip(result.engines, statuses, strict=True)
        engines = [{**r.to_json(), "status": s} for r, s in pairs]
        print(json.dumps({"model": _model_json(result.model), "engines": engines}, indent=2, sort_keys=True))
        return 0
    out.print(f"added model [bold]{result.model.name}[/] ({result.model.kind}) from {result.model.source}")
    for record, status in zip(result.engines, statuses, strict=True):
        out.print(f"  {record.engine_id}: {status.split(';')[0]}")
        gate = record.options.get("gate")
        if gate:
            out.print(
                f"    gate: greedy agreement {gate['token_agreement']:.1%} "
                f"(min {gate['min_agreement']:.0%}), max |Δlogit| {gate['max_logit_diff']:.2f} "
                f"(max {gate['max_allowed_logit_diff']:g}), "
                f"{gate['ms_per_token']:.1f} vs FP32 {gate['fp32_ms_per_token']:.1f} ms/token"
            )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from infermeter.runtime.engine_store import EngineStore

    store = EngineStore(load_settings({"home": args.home}).home)
    try:
        models = store.models()
        engines = {m.name: store.list(m.name) for m in models}
    finally:
        store.close()
    if args.json:
        rows = [{**_model_json(m), "engines": [r.engine_id for r in engines[m.name]]} for m in models]
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    table = Table("model", "kind", "source", "engines", "added")
    for m in models:
        kinds = ", ".join(f"{r.backend}/{r.precision.value}" for r in engines[m.name]) or "none"
        table.add_row(m.name, m.kind, m.source, kinds, m.added_at[:10])
    out.print(table)
    return 0


def _model_json(model: Any) -> dict[str, Any]:
    return {"name": model.name, "kind": model.kind, "source": model.source, "dir": model.model_dir,
            "added_at": model.added_at, **model.info}  # fmt: skip


def register(sub: Any) -> None:
    models = sub.add_parser("models", help="add Hugging Face, GGUF or ONNX models; list them").add_subparsers(
        dest="models_command", required=True, metavar="ACTION"
    )
    p = models.add_parser("add", help="import a model and build its default engines")
    p.add_argument("name", help="the name clients send as `model`")
    p.add_argument("source", help="a Hugging Face folder, a .gguf file or an Optimum ONNX export")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--max-batch", type=int, dest="max_batch", help="default: serve's max batch")
    p.add_argument(
        "--max-seq-len", type=int, dest="max_seq_len", help="context (default: the model's, at most 4096)"
    )
    p.add_argument("--force", action="store_true", help="serve an economy engine even if it fails the gate")
    p.add_argument("--json", action="store_true", help="print the model and engine records")
    p.set_defaults(handler=cmd_add)

    p = models.add_parser("list", help="list added models and their engines")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_list)
