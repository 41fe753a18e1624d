#!/usr/bin/env python3
"""Compare INT8 recipes for an ONNX decoder: drift against FP32 and batch-1 decode speed.

    PYTHONPATH=src python scripts/compare_onnx_int8.py [MODEL_DIR] [--recipes a,b,...]

MODEL_DIR is an Optimum export (model.onnx, config.json, tokenizer.json); without it, the
built-in tiny-gpt. Each recipe writes a graph into a temporary directory, and the economy
gate's own measurement compares it with the FP32 graph (``compile.economy_gate``: greedy
agreement and max |Δlogit| teacher-forced on the drift prompts; median batch-1 decode step,
the two engines' steps alternating, one intra-op thread). Prints one JSON line per recipe.
The figures behind the choice of ``MatMulNBits`` 8-bit (docs/benchmarks.md) came from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "src" / "infermeter").is_dir():
    sys.path.insert(0, str(ROOT / "src"))


def recipes(src: Path, info: object, tokenizer: object) -> dict[str, Callable[[Path], None]]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from infermeter.runtime.compile import onnx_precision, quantization_data

    def static(dst: Path) -> None:
        texts = quantization_data.default_texts()
        feeds = onnx_precision.calibration_feeds(src, info, tokenizer, texts)  # type: ignore[arg-type]
        onnx_precision.quantize_int8(src, dst, feeds)

    def dynamic(per_channel: bool) -> Callable[[Path], None]:
        def run(dst: Path) -> None:
            quantize_dynamic(
                str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                op_types_to_quantize=["MatMul", "Gemm"], extra_options={"MatMulConstBOnly": True},
            )  # fmt: skip

        return run

    def nbits(bits: int, block: int, accuracy_level: int | None) -> Callable[[Path], None]:
        def run(dst: Path) -> None:
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                DefaultWeightOnlyQuantConfig,
                MatMulNBitsQuantizer,
            )

            config = DefaultWeightOnlyQuantConfig(
                block_size=block, is_symmetric=True, accuracy_level=accuracy_level, bits=bits
            )
            quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
            quantizer.process()
            onnx_precision.save_model(quantizer.model.model, dst)

        return run

    return {
        "static-qdq": static,
        "dynamic": dynamic(False),
        "dynamic-per-channel": dynamic(True),
        "nbits8-b32": nbits(8, 32, None),
        "nbits8-b32-acc4": nbits(8, 32, 4),
        "nbits4-b32": nbits(4, 32, None),
        "nbits4-b32-acc4": nbits(4, 32, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model_dir", nargs="?", help="an Optimum export (default: the built-in tiny-gpt)")
    parser.add_argument("--recipes", help="comma-separated subset (default: all)")
    args = parser.parse_args(argv)

    from infermeter.core.types import Precision
    from infermeter.runtime.builtin_model import ensure_builtin_model
    from infermeter.runtime.compile import decoder_io, economy_gate, onnx_gate
    from infermeter.runtime.ort_backend import OrtEngine
    from infermeter.runtime.tokenizer import load_tokenizer

    work = Path(tempfile.mkdtemp(prefix="infermeter-int8-"))
    try:
        model_dir = Path(args.model_dir) if args.model_dir else ensure_builtin_model(work / "tiny-gpt")
        src = model_dir / "model.onnx"
        info = decoder_io.model_info(model_dir)
        tokenizer = load_tokenizer(model_dir)
        table = recipes(src, info, tokenizer)
        chosen = args.recipes.split(",") if args.recipes else list(table)
        fp32 = OrtEngine.load(model_dir, timer=onnx_gate._WallTimer(), intra_op_threads=1)
        fp32_session = decoder_io.open_session(src)
        for name in chosen:
            dst = work / f"{name}.onnx"
            t0 = time.perf_counter()
            table[name](dst)
            build_s = time.perf_counter() - t0
            cand = OrtEngine.load(
                model_dir, precision=Precision.INT8, timer=onnx_gate._WallTimer(),
                intra_op_threads=1, model_file=str(dst),
            )  # fmt: skip
            session = decoder_io.open_session(dst)
            agreement, max_diff, positions = economy_gate.measure_drift(
                fp32,
                lambda ids: decoder_io.run(fp32_session, info, list(ids))[0],
                lambda ids, s=session: decoder_io.run(s, info, list(ids))[0],
                tokenizer,
            )
            fp32_ms, ms = economy_gate.decode_ms_per_token([fp32, cand], tokenizer, steps=24)
            size = sum(p.stat().st_size for p in work.glob(f"{name}.onnx*"))
            print(json.dumps({
                "recipe": name, "agreement": round(agreement, 4), "max_dlogit": round(max_diff, 3),
                "positions": positions, "fp32_ms_per_token": round(fp32_ms, 3),
                "ms_per_token": round(ms, 3), "speedup": round(fp32_ms / ms, 2),
                "build_s": round(build_s, 1), "size_mb": round(size / 1e6, 1),
            }), flush=True)  # fmt: skip
            cand.close()
        fp32.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
