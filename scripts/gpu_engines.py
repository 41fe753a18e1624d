"""GPU check for the engines layer (issue 3): PyTorch FP32/FP16/BF16 engines on CUDA timed
by CUDA events, against ONNX Runtime FP32/INT8 on the host; prefill/decode tokens/s.

Run from the repository root on a machine with an NVIDIA GPU and PyTorch (no network):

    python scripts/gpu_engines.py        # writes $OUT/gpu_bench.json (or /tmp) and prints it

Not yet run on a GPU (written while none was lent); copy its figures into the "Engines"
section of docs/benchmarks.md with the device and date. INT8 on a GPU needs TensorRT.
"""

import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, "src")
import torch

from infermeter.core.types import Precision
from infermeter.metering.cuda_timer import CudaEventTimer
from infermeter.metering.timers import CpuStepTimer
from infermeter.runtime.compile.bench import bench_engine
from infermeter.runtime.compile.builder import build_engine
from infermeter.runtime.compile.metadata import BuildArgs
from infermeter.runtime.engine import SeqInput
from infermeter.runtime.engine_store import EngineStore, cpu_name
from infermeter.runtime.ort_backend import OrtEngine
from infermeter.runtime.torch_backend import TorchEngine, torch_env

out = Path(os.environ.get("OUT", "/tmp"))
home = Path("/tmp/gpuhome")
store = EngineStore(home)
report = {
    "gpu": torch.cuda.get_device_name(0),
    "capability": torch.cuda.get_device_capability(0),
    "torch": torch.__version__,
    "cpu": cpu_name(),
    "cores": len(os.sched_getaffinity(0)),
    "date": time.strftime("%Y-%m-%d", time.gmtime()),
    "results": [],
    "notes": [],
}
env = torch_env("cuda")
report["env"] = [env.runtime, env.version, env.device, env.device_name, env.compute_capability]
for prec in (Precision.FP32, Precision.FP16, Precision.BF16):
    rec = build_engine(
        BuildArgs("tiny-gpt", "torch", prec, 16, 1024), store, models_dir=home / "models", device="cuda"
    )
    store.check(rec, env)
    eng = TorchEngine.load(
        store.path(rec),
        precision=prec,
        device="cuda",
        max_batch=16,
        engine_id=rec.engine_id,
        timer_factory=lambda s: CudaEventTimer(s),
    )
    o = eng.step([SeqInput("x", list(range(64)))])
    report["notes"].append(f"{rec.engine_id}: 64-token prefill device_us={o.device_us}")
    for batch in (8, 16):
        report["results"].append(
            bench_engine(eng, prompt_tokens=128, decode_steps=32, batch=batch, rounds=5).to_json()
        )
    eng.close()
for prec in (Precision.FP32, Precision.INT8):
    rec = build_engine(
        BuildArgs("tiny-gpt", "onnxruntime", prec, 16, 1024), store, models_dir=home / "models"
    )
    eng = OrtEngine.load(
        store.path(rec), precision=prec, timer=CpuStepTimer(), engine_id=rec.engine_id, intra_op_threads=2
    )
    report["results"].append(
        bench_engine(eng, prompt_tokens=128, decode_steps=32, batch=8, rounds=5).to_json()
    )
    eng.close()
try:  # the serving path: device class from the GPU name, CUDA-event timer on the engine stream
    from infermeter.app.engines import load_engine
    from infermeter.config import load_settings

    rec = store.latest("tiny-gpt", "torch", Precision.FP16, "cuda")
    eng = load_engine(store, rec, load_settings({"home": home}, env={}), CpuStepTimer)
    report["serving"] = [
        eng.info.engine_id,
        eng.info.device,
        eng.info.device_class,
        type(eng.timer).__name__,
        eng.step([SeqInput("y", [1, 2, 3])]).device_us,
    ]
except Exception:
    report["serving_error"] = traceback.format_exc()[-1500:]
(out / "gpu_bench.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
