"""The Llama stages of ``scripts/gpu_check.py``: a 1B-class model on the transformers engine.

A Llama-shaped model with random weights is built from a ``transformers`` config on the
device (no download, nothing to carry): ``LLAMA_1B`` on a GPU (hidden 2048, 16 layers, 32
query and 8 KV heads, MLP 8192, vocabulary 32,000: 1.1 B parameters), ``LLAMA_TINY`` for the
CPU dry run. Its end-of-text id is unset, so every request decodes exactly its ``max_tokens``
and transformers' ``generate`` can be asked for the same tokens.

It is served through ``HFEngine.from_model`` (the transformers backend) at FP16 on CUDA (FP32
on the CPU) inside a real ``Service`` with metering on, and ``gpu_check`` runs its metering
stages on it (tokens/s metering on ÷ off, conservation, energy per 1,000 tokens, RU of four
fixed prompts, calibration, attribution error vs solo). This module adds:

- ``versus_generate``: infermeter's tokens/s against transformers' own batched ``generate``
  on the same prompts and token counts (left-padded, greedy), as a ratio;
- ``economy``: each GPU economy candidate (weight-only int8 through ``_weight_int8pack_mm``,
  FP8 e4m3 through ``torch._scaled_mm``) built from the same weights and measured against
  FP16 as the economy gate measures (greedy agreement and max |Δlogit| teacher-forced on the
  drift prompts, batch-1 decode ms/token with steps alternating) plus batch-8 decode
  tokens/s. With random weights the logits are nearly flat, so agreement is a severe test
  of numeric drift, not of quality.
"""

from __future__ import annotations

import copy
import time
from typing import Any

LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
}
LLAMA_TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 512,
}
MODEL_NAME = "llama-random"


def build_llama(size: str, device: str, seed: int = 0) -> Any:
    """The random-weight Llama of ``size`` ("1b" or "tiny") on ``device``: FP16 on CUDA, else FP32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = LLAMA_1B if size == "1b" else LLAMA_TINY
    config = LlamaConfig(
        **dims, eos_token_id=None, bos_token_id=None, pad_token_id=None, tie_word_embeddings=False
    )
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(seed)
    with torch.device(device):  # initialised on the device in FP32 (4.4 GB for 1b), then cast
        model = LlamaForCausalLM(config)
    model = model.to(dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def timer_factory(device: str) -> Any:
    """CUDA-event timers on the engine's stream on a GPU; the CPU wall-time timer otherwise."""
    from infermeter.metering.timers import CpuStepTimer

    def make(stream: Any) -> Any:
        if stream is None:
            return CpuStepTimer()
        from infermeter.metering.cuda_timer import CudaEventTimer

        return CudaEventTimer(stream)

    return make


def device_class(device: str) -> str:
    """The RU table's class for ``device`` (RuntimeError for a GPU the table lacks)."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    from infermeter.metering.ru import device_class_for

    name = torch.cuda.get_device_name(0)
    found = device_class_for(name)
    if found is None:
        raise RuntimeError(f"GPU {name!r} has no RU factors in the seed table")
    return found


def make_engine(model: Any, device: str, *, precision: Any, engine_id: str, recipe: str | None = None) -> Any:
    from infermeter.runtime.hf_backend import HFEngine

    return HFEngine.from_model(
        model, precision=precision, timer_factory=timer_factory(device), device=device,
        max_batch=16, max_seq_len=1024, engine_id=engine_id, model_name=MODEL_NAME,
        device_class=device_class(device), recipe=recipe,
    )  # fmt: skip


def performance_engine(model: Any, device: str) -> Any:
    from infermeter.core.types import Precision

    precision = Precision.FP16 if device.startswith("cuda") else Precision.FP32
    return make_engine(
        model, device, precision=precision, engine_id=f"{MODEL_NAME}-transformers-{precision.value}"
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def versus_generate(
    ctx: dict[str, Any], data: dict[str, Any], run_batch: Any, count: int, new_tokens: int
) -> None:
    """Tokens/s of infermeter (metering on) and of transformers' batched ``generate``."""
    import torch

    service, engine, model, device = ctx["service"], ctx["engine"], ctx["model"], ctx["device"]
    vocab = engine.info.vocab_size
    work = [([(7 + i * 13 + k * 7) % (vocab - 4) + 1 for k in range(16 + (i * 37) % 113)], new_tokens)
            for i in range(count)]  # fmt: skip
    run_batch(service, engine.info.engine_id, work, "vs-generate-warm")
    tokens, seconds, _ = run_batch(service, engine.info.engine_id, work, "vs-generate")
    width = max(len(ids) for ids, _ in work)
    ids = torch.zeros((count, width), dtype=torch.long)
    mask = torch.zeros((count, width), dtype=torch.long)
    for row, (prompt, _) in enumerate(work):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)

    def generate() -> int:
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
            )  # fmt: skip
        return int(out.shape[1] - width) * count

    generate()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    hf_tokens = generate()
    _sync(device)
    hf_seconds = time.perf_counter() - t0
    data["requests"] = count
    data["new_tokens_each"] = new_tokens
    data["infermeter_tokens"] = tokens
    data["infermeter_tokens_per_s"] = round(tokens / seconds, 1)
    data["generate_tokens"] = hf_tokens
    data["generate_tokens_per_s"] = round(hf_tokens / hf_seconds, 1)
    data["ratio"] = round((tokens / seconds) / (hf_tokens / hf_seconds), 3)


def economy(ctx: dict[str, Any], data: dict[str, Any]) -> None:
    """Each economy candidate against the FP16 engine: drift, ms/token, batch-8 tokens/s."""
    import torch

    from infermeter.core.types import Precision
    from infermeter.runtime.compile import economy_gate
    from infermeter.runtime.compile.bench import bench_engine
    from infermeter.runtime.compile.drift import DRIFT_PROMPTS
    from infermeter.runtime.hf_backend import quantize_fp8, quantize_int8, require_int8_kernel

    reference, model, device, tokenizer = ctx["engine"], ctx["model"], ctx["device"], ctx["tokenizer"]
    base = bench_engine(reference, prompt_tokens=64, decode_steps=16, batch=8, rounds=2)
    data["reference"] = {"precision": reference.info.precision.value, **base.to_json()}

    def int8(m: Any) -> Any:
        require_int8_kernel(torch, device)
        return quantize_int8(m)

    candidates = {
        "int8-weight-only": (int8, Precision.INT8, "weight-only int8 (_weight_int8pack_mm)"),
        "fp8-e4m3": (quantize_fp8, reference.info.precision, "fp8 e4m3 (_scaled_mm), measured only"),
    }
    for name, (quantize, precision, recipe) in candidates.items():
        entry: dict[str, Any] = {"recipe": recipe}
        data[name] = entry
        try:
            quantized = quantize(copy.deepcopy(model))
            engine = make_engine(
                quantized, device, precision=precision, engine_id=f"{MODEL_NAME}-transformers-{name}",
                recipe=recipe,
            )  # fmt: skip
        except Exception as exc:  # an unsupported kernel is a finding, not an abort
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        try:
            agreement, max_diff, positions = economy_gate.measure_drift(
                reference, _scorer(reference), _scorer(engine), tokenizer
            )
            ref_ms, ms = economy_gate.decode_ms_per_token([reference, engine], tokenizer)
            gate = economy_gate.decide(
                agreement, max_diff, ms, ref_ms, prompts=len(DRIFT_PROMPTS), positions=positions
            )
            bench = bench_engine(engine, prompt_tokens=64, decode_steps=16, batch=8, rounds=2)
            entry |= {"gate": gate.to_json(), "bench": bench.to_json()}
        except Exception as exc:  # a kernel that loads but fails on these shapes: a finding too
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            engine.close()
            del quantized
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


def _scorer(engine: Any) -> Any:
    torch = engine.torch

    def score(ids: Any) -> Any:
        with torch.inference_mode():
            x = torch.tensor([list(ids)], dtype=torch.long, device=engine.device)
            return engine.model(input_ids=x, use_cache=False).logits[0].float().cpu().numpy()

    return score


def table_rows(report: Any, prefix: str) -> list[tuple[str, str, str]]:
    """The Llama-only rows of the summary: versus generate and the economy candidates."""
    rows: list[tuple[str, str, str]] = []
    b = report.data(prefix + "build")
    if b:
        rows.append(("model", f"{b['config']} ({b['parameters']:,} parameters, random weights)", ""))
    v = report.data(prefix + "vs_generate")
    rows.append(
        (
            "tokens/s vs transformers generate (batched)",
            f"{v['ratio']:.3f} ({v['infermeter_tokens_per_s']:.0f} / {v['generate_tokens_per_s']:.0f}, "
            f"{v['requests']} requests x {v['new_tokens_each']} tokens)"
            if v
            else _failed(report, prefix + "vs_generate"),
            ">= 1",
        )
    )
    e = report.data(prefix + "economy")
    for name in ("int8-weight-only", "fp8-e4m3"):
        entry = e.get(name) if e else None
        if not entry:
            rows.append((f"economy {name}", _failed(report, prefix + "economy"), ""))
            continue
        if "error" in entry:
            rows.append((f"economy {name}", "not available: " + entry["error"][:90], ""))
            continue
        g, bench = entry["gate"], entry["bench"]
        ref = e["reference"]
        rows.append(
            (
                f"economy {name} vs {ref['precision']}",
                f"agreement {g['token_agreement']:.1%}, max |Δlogit| {g['max_logit_diff']:.2f}, "
                f"{g['ms_per_token']:.2f} vs {g['fp32_ms_per_token']:.2f} ms/token, batch-8 "
                f"{bench['batch_decode_tokens_per_s']:.0f} vs {ref['batch_decode_tokens_per_s']:.0f} tok/s, "
                f"gate {'passed' if g['passed'] else 'refused'}",
                ">= 90 %, <= 4, faster",
            )
        )
    return rows


def _failed(report: Any, name: str) -> str:
    entry = report.sections.get(name)
    if entry is None:
        return "not run"
    return "FAILED: " + str(entry.get("error", "?"))[:70]


__all__ = [
    "LLAMA_1B",
    "LLAMA_TINY",
    "MODEL_NAME",
    "build_llama",
    "economy",
    "parameters",
    "performance_engine",
    "table_rows",
    "versus_generate",
]
