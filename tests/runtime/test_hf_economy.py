"""The transformers engine's GPU economy paths, checked where they can run.

FP8 e4m3 (``quantize_fp8``): on the CPU the Linear computes its quantized product by
dequantizing, which checks the scales and rounding; the fused ``torch._scaled_mm`` path
needs a CUDA GPU of compute capability 8.9+ and is compared with that reference there.
``HFEngine.from_model`` serves a model built in memory (as ``scripts/gpu_check.py`` does).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infermeter.core.errors import ConfigError
from infermeter.core.timing import NullTimer
from infermeter.core.types import Precision
from infermeter.runtime.engine import SeqInput
from tests.tiny_llama import write_tiny_llama

torch: Any = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[hf]')")
if importlib.util.find_spec("transformers") is None:
    pytest.skip("transformers is not installed (pip install -e '.[hf]')", allow_module_level=True)

from infermeter.runtime import hf_backend  # noqa: E402  (needs torch, checked above)

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability(0) >= (8, 9)


def linear(out_features: int = 48, in_features: int = 64, device: str = "cpu") -> Any:
    torch.manual_seed(0)
    return torch.nn.Linear(in_features, out_features, bias=True).to(device)


def test_an_fp8_linear_stays_within_e4m3_rounding_of_the_float_one() -> None:
    """Per-channel weight and per-token activation scales: the product is within a few %
    of FP32's, and the weights are stored as float8_e4m3fn."""
    dense = linear()
    fp8 = hf_backend._fp8_linear_class(torch)(dense)
    x = torch.randn(5, 64)
    with torch.no_grad():
        exact, approx = dense(x), fp8(x)
    assert fp8.qweight.dtype == torch.float8_e4m3fn and not fp8.fused
    assert float((approx - exact).norm() / exact.norm()) < 0.06
    assert float((approx - exact).abs().max()) > 0  # it really is quantized


def test_quantize_fp8_replaces_every_linear(tmp_path: Path) -> None:
    """A Llama's projections and lm_head all become FP8 Linears; no nn.Linear is left."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(write_tiny_llama(tmp_path / "m")))
    count = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    hf_backend.quantize_fp8(model)
    fp8 = hf_backend._fp8_linear_class(torch)
    assert sum(isinstance(m, fp8) for m in model.modules()) == count > 0
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())


def test_an_engine_serves_a_model_built_in_memory(tmp_path: Path) -> None:
    """from_model probes the KV shape and steps the model like a loaded one."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(write_tiny_llama(tmp_path / "m"))).eval()
    engine = hf_backend.HFEngine.from_model(
        model, precision=Precision.FP32, timer_factory=lambda _s: NullTimer(), model_name="mem"
    )
    info = engine.info
    assert (info.model, info.num_layers, info.num_kv_heads, info.head_dim) == ("mem", 2, 2, 16)
    out = engine.step([SeqInput("a", [1, 2, 3])])
    with torch.inference_mode():
        expected = model(input_ids=torch.tensor([[1, 2, 3]])).logits[0, -1].numpy()
    np.testing.assert_allclose(out.logits["a"], expected, rtol=1e-4, atol=1e-4)
    engine.close()


def test_int8_on_a_device_without_the_kernel_names_the_fix() -> None:
    """The CPU has the weight-only int8 kernel; a device that lacks it is a ConfigError."""
    hf_backend.require_int8_kernel(torch, "cpu")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; the refusal is for devices without the kernel")
    with pytest.raises(ConfigError, match=r"no weight-only int8 kernel .* for cuda.*serve fp16 or bf16"):
        hf_backend.require_int8_kernel(torch, "cuda")


@pytest.mark.skipif(not HOPPER, reason="the fused FP8 path needs a CUDA GPU of compute capability 8.9+")
def test_the_fused_fp8_matmul_equals_the_reference_product() -> None:  # pragma: no cover - GPU only
    """On Ada/Hopper ``torch._scaled_mm`` gives the dequantized reference product."""
    dense = linear(256, 512, "cuda").half()
    fp8 = hf_backend._fp8_linear_class(torch)(dense)
    assert fp8.fused
    x = torch.randn(7, 512, device="cuda", dtype=torch.float16)
    fused = fp8(x).float()
    fp8.fused = False
    reference = fp8(x).float()
    assert float((fused - reference).norm() / reference.norm()) < 0.01
