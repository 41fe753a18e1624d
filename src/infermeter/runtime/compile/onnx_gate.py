"""The economy gate for ONNX Runtime INT8 builds: drift and speed against the FP32 graph.

The same gate as the ``transformers`` backend's (``economy_gate``): both graphs are opened
as serving opens them (``OrtEngine``: sequential execution, full graph optimization), FP32's
greedy continuation of the fixed prompts is scored teacher-forced by both, and their
batch-1 decode steps alternate for the speed figure. The step time is the step's wall time,
which is what metering bills for a CPU engine (serialized execution: the step's wall
interval is the device time it occupied). Both run on one intra-op thread by default: the
verdict is a relative figure, and on a shared machine spinning worker threads turn
multi-threaded step times into noise (SmolLM2's FP32 decode measured 26 ms/token on one
thread and 129 ms/token on two busy cores).
"""

from __future__ import annotations

from pathlib import Path

from infermeter.core.timing import WallTimer
from infermeter.core.types import Precision
from infermeter.runtime.compile import decoder_io, economy_gate
from infermeter.runtime.compile.drift import DRIFT_PROMPTS
from infermeter.runtime.engine import EngineInfo, Tokenizer
from infermeter.runtime.ort_backend import OrtEngine

DECODE_STEPS = 24  # per prompt and engine: a tiny model's steps are short, so take many


def gate_onnx_int8(
    model_dir: Path,
    fp32_graph: Path,
    int8_graph: Path,
    info: EngineInfo,
    tokenizer: Tokenizer,
    *,
    forced: bool = False,
    intra_op_threads: int = 1,
) -> economy_gate.GateReport:
    """The gate's verdict on ``int8_graph`` against ``fp32_graph`` (config from ``model_dir``)."""
    # model_file is absolute, so model_dir / model_file is the graph itself
    engines = [
        OrtEngine.load(
            model_dir,
            precision=precision,
            timer=WallTimer(),
            intra_op_threads=intra_op_threads,
            model_file=str(graph.resolve()),
        )
        for precision, graph in ((Precision.FP32, fp32_graph), (Precision.INT8, int8_graph))
    ]
    try:
        fp32_session = decoder_io.open_session(fp32_graph)
        int8_session = decoder_io.open_session(int8_graph)
        agreement, max_diff, positions = economy_gate.measure_drift(
            engines[0],
            lambda ids: decoder_io.run(fp32_session, info, list(ids))[0],
            lambda ids: decoder_io.run(int8_session, info, list(ids))[0],
            tokenizer,
        )
        fp32_ms, ms = economy_gate.decode_ms_per_token(engines, tokenizer, steps=DECODE_STEPS)
    finally:
        for engine in engines:
            engine.close()
    return economy_gate.decide(
        agreement, max_diff, ms, fp32_ms, prompts=len(DRIFT_PROMPTS), positions=positions, forced=forced
    )


__all__ = ["DECODE_STEPS", "gate_onnx_int8"]
