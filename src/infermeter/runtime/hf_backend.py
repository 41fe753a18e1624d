"""The ``transformers`` engine: any Hugging Face decoder, run by transformers' own model class.

A model directory saved by ``transformers`` (config.json, ``*.safetensors``, tokenizer.json)
is loaded with ``AutoModelForCausalLM`` — Llama, Qwen, Mistral, Gemma, Phi-3, GPT-2 or
whatever the config names; no architecture is written here. Precisions:

- CPU: FP32; BF16 (weights and KV cache in bfloat16); INT8 = weight-only int8: the BF16
  model with every ``nn.Linear`` weight stored as int8 with one scale per output channel,
  multiplied by ``torch._weight_int8pack_mm`` (int8 weights read, bf16 activations and
  accumulation), KV cache BF16. Dynamic int8 (``torch.ao`` ``quantize_dynamic``, int8
  activations too) was measured faster but far off FP32 on SmolLM2-135M (greedy agreement
  50-65 %, max |Δlogit| 24), so it is not used.
- CUDA: FP16 and BF16 (and FP32); INT8 = the same weight-only int8 Linear with FP16
  activations, where this torch has a CUDA kernel for ``_weight_int8pack_mm``
  (``require_int8_kernel`` probes it at load and names the fix otherwise). ``quantize_fp8``
  (FP8 e4m3 weights and per-token activations, ``torch._scaled_mm`` on compute capability
  8.9+) is the other GPU economy candidate; ``scripts/gpu_check.py`` measures both against
  FP16. None of the CUDA paths has run here: no GPU was lent.

Batching is ``PaddedKVEngine``'s: each sequence's KV cache is a tensor held by the engine;
a step's decode inputs run as one left-padded batch (padding masked by ``attention_mask``,
true ``position_ids``), passed to the model as a ``DynamicCache`` holding the padded past,
and each sequence's new K/V is cut back out. Prefill chunks run one sequence per forward:
a left-padded fresh prompt would give its pad queries no key to attend to, and some
attention kernels turn such a row into NaN, so prefill is never padded. Under greedy
decoding a sequence's tokens are then the same batched as alone (tested against
``generate``).

The KV shape (layers, KV heads, head size) is read from one probe forward at load, so the
engine needs nothing from the config beyond what ``transformers`` itself reads. On CUDA the
engine states a KV budget (``extra["kv_budget_bytes"]``: ``KV_FRACTION`` of the device
memory free after loading) that the scheduler admits and preempts against unless
``kv_cache_mb`` sets one; the scheduler counts cached tokens, and a sequence's tensor grows
by doubling, so the memory held can reach twice the count (untested: no GPU was lent).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from infermeter.core.errors import ConfigError, EngineError
from infermeter.core.types import Precision
from infermeter.runtime.engine import EngineInfo, SeqInput
from infermeter.runtime.torch_batching import PaddedKVEngine, TimerFactory, import_torch

BACKEND = "transformers"
CPU_PRECISIONS = (Precision.FP32, Precision.BF16, Precision.INT8)
CUDA_PRECISIONS = (Precision.FP16, Precision.BF16, Precision.FP32, Precision.INT8)
INT8_RECIPE = "weight-only int8 Linear (per-output-channel scales), bf16 activations"
DEFAULT_MAX_SEQ_LEN = 4096  # cap on the context a model's config may claim (KV memory)
KV_FRACTION = 0.9  # of the device memory free after loading, for the KV budget on CUDA


def precisions_for(device: str) -> tuple[Precision, ...]:
    return CUDA_PRECISIONS if device.startswith("cuda") else CPU_PRECISIONS


def check_precision(precision: Precision, device: str) -> None:
    allowed = precisions_for(device)
    if precision not in allowed:
        raise ConfigError(
            f"the transformers backend runs {', '.join(p.value for p in allowed)} on "
            f"{'cuda' if device.startswith('cuda') else 'cpu'}, not {precision.value}; "
            "pick one of those"
        )


def load_causal_lm(model_dir: Path, precision: Precision, device: str = "cpu") -> Any:
    """The model in ``model_dir`` through ``AutoModelForCausalLM``, in ``precision``, eval mode."""
    check_precision(precision, device)
    torch = import_torch()
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise ConfigError(
            "the transformers backend needs transformers: pip install 'infermeter[hf]'"
        ) from exc
    cuda = torch.device(device).type == "cuda"
    if precision == Precision.INT8 and cuda:
        require_int8_kernel(torch, device)
    half = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16,
            Precision.INT8: torch.float16 if cuda else torch.bfloat16}  # fmt: skip
    dtype = half.get(precision, torch.float32)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype, attn_implementation="sdpa"
        )
    except (OSError, ValueError, KeyError) as exc:
        raise EngineError(
            f"transformers cannot load the model in {model_dir}: {exc}; re-import it with "
            "`infermeter models add NAME SOURCE`"
        ) from exc
    model.eval()
    if precision == Precision.INT8:
        model = quantize_int8(model)
    return model.to(torch.device(device))


def quantize_int8(model: Any) -> Any:
    """Every ``nn.Linear`` of ``model`` replaced by a weight-only int8 Linear, in place."""
    torch = import_torch()
    linear = _int8_linear_class(torch)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, child_name, linear(child))
    return model


def require_int8_kernel(torch: Any, device: str) -> None:
    """ConfigError unless this torch has ``_weight_int8pack_mm`` for ``device`` (one tiny call)."""
    dev = torch.device(device)
    try:
        x = torch.ones((1, 32), dtype=torch.float16, device=dev)
        q = torch.ones((8, 32), dtype=torch.int8, device=dev)
        torch._weight_int8pack_mm(x, q, torch.ones(8, dtype=torch.float16, device=dev))
    except (RuntimeError, NotImplementedError, AssertionError) as exc:  # no kernel, no CUDA build
        raise ConfigError(
            f"torch {torch.__version__} has no weight-only int8 kernel (_weight_int8pack_mm) for "
            f"{dev.type}: {str(exc).splitlines()[0]}; serve fp16 or bf16 there instead"
        ) from exc


def quantize_fp8(model: Any) -> Any:
    """Every ``nn.Linear`` of ``model`` replaced by an FP8 (e4m3) Linear, in place (see
    ``Fp8Linear``); measured for drift by ``scripts/gpu_check.py``, not routed: the router's
    economy slot is INT8."""
    torch = import_torch()
    linear = _fp8_linear_class(torch)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, child_name, linear(child))
    return model


FP8_MAX = 448.0  # the largest finite float8_e4m3fn
_FP8_LINEAR: list[type] = []


def _fp8_linear_class(torch: Any) -> type:
    """The FP8 e4m3 Linear class: per-output-channel weight scales, per-token activation scales.

    ``forward`` runs ``torch._scaled_mm`` (row-wise scales, bf16 out) where the weights live on
    a CUDA device of compute capability 8.9 or newer (Ada, Hopper); elsewhere it computes the
    same quantized product by dequantizing, which is what the CPU tests check the math with.
    """
    if _FP8_LINEAR:
        return _FP8_LINEAR[0]

    class Fp8Linear(torch.nn.Module):  # type: ignore[misc]
        """``y ≈ (x_q · sx) @ (w_q · sw).T + b`` with ``x_q``, ``w_q`` in float8_e4m3fn."""

        def __init__(self, linear: Any) -> None:
            super().__init__()
            weight = linear.weight.detach().float()
            scales = weight.abs().amax(dim=1).clamp(min=1e-12) / FP8_MAX
            self.register_buffer("qweight", (weight / scales[:, None]).to(torch.float8_e4m3fn).contiguous())
            self.register_buffer("scales", scales.contiguous())  # float32 [out]
            self.bias = linear.bias
            self.out_features = int(weight.shape[0])
            dev = weight.device
            self.fused = dev.type == "cuda" and torch.cuda.get_device_capability(dev) >= (8, 9)

        def forward(self, x: Any) -> Any:
            flat = x.reshape(-1, x.shape[-1])
            x_scales = flat.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
            xq = (flat.float() / x_scales).to(torch.float8_e4m3fn)
            if self.fused:
                y = torch._scaled_mm(
                    xq, self.qweight.t(), scale_a=x_scales, scale_b=self.scales[None, :],
                    out_dtype=torch.bfloat16,
                ).to(x.dtype)  # fmt: skip
            else:
                w = self.qweight.float() * self.scales[:, None]
                y = ((xq.float() * x_scales) @ w.t()).to(x.dtype)
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias

    _FP8_LINEAR.append(Fp8Linear)
    return Fp8Linear


_INT8_LINEAR: list[type] = []


def _int8_linear_class(torch: Any) -> type:
    """The weight-only int8 Linear module class (made once torch is imported)."""
    if _INT8_LINEAR:
        return _INT8_LINEAR[0]

    class Int8WeightOnlyLinear(torch.nn.Module):  # type: ignore[misc]
        """``y = x @ (q * s).T + b``: int8 ``q`` [out, in], one FP scale per output row."""

        def __init__(self, linear: Any) -> None:
            super().__init__()
            weight = linear.weight.detach().float()
            scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
            self.register_buffer("qweight", q.contiguous())
            self.register_buffer("scales", scales.to(linear.weight.dtype).contiguous())
            self.bias = linear.bias
            self.out_features = int(weight.shape[0])

        def forward(self, x: Any) -> Any:
            flat = x.reshape(-1, x.shape[-1]).contiguous()
            y = torch._weight_int8pack_mm(flat, self.qweight, self.scales.to(x.dtype))
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias

    _INT8_LINEAR.append(Int8WeightOnlyLinear)
    return Int8WeightOnlyLinear


class HFEngine(PaddedKVEngine):
    """The Engine protocol over a ``transformers`` causal LM (see the module docstring)."""

    def __init__(
        self,
        info: EngineInfo,
        model: Any,
        timer_factory: TimerFactory,
        *,
        device: Any,
        kv_dtype: Any,
        stream: Any | None,
    ) -> None:
        super().__init__(info, timer_factory(stream), device=device, kv_dtype=kv_dtype, stream=stream)
        self.model = model

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        precision: Precision,
        timer_factory: TimerFactory,
        device: str = "cpu",
        max_batch: int = 16,
        max_seq_len: int | None = None,
        engine_id: str | None = None,
        model_name: str | None = None,
        device_class: str | None = None,
    ) -> HFEngine:
        """Load ``model_dir`` onto ``device`` in ``precision`` and probe its KV shape."""
        torch = import_torch()
        model_dir = Path(model_dir)
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device} asked for, but torch sees no CUDA device; use --device cpu")
        model = load_causal_lm(model_dir, precision, device)
        return cls.from_model(
            model, precision=precision, timer_factory=timer_factory, device=device,
            max_batch=max_batch, max_seq_len=max_seq_len, engine_id=engine_id,
            model_name=model_name or _saved_name(model_dir), device_class=device_class,
            extra={"model_dir": str(model_dir)},
        )  # fmt: skip

    @classmethod
    def from_model(
        cls,
        model: Any,
        *,
        precision: Precision,
        timer_factory: TimerFactory,
        device: str = "cpu",
        max_batch: int = 16,
        max_seq_len: int | None = None,
        engine_id: str | None = None,
        model_name: str = "model",
        device_class: str | None = None,
        recipe: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> HFEngine:
        """An engine over a ``transformers`` causal LM already in ``precision`` on ``device``
        (``load`` reads one from a folder; ``scripts/gpu_check.py`` builds one from a config)."""
        torch = import_torch()
        dev = torch.device(device)
        layers, kv_heads, head_dim, kv_dtype = _probe_kv(torch, model, dev)
        config = model.config
        context = _context(config)
        limit = min(context, max_seq_len or DEFAULT_MAX_SEQ_LEN)
        eos = _first_int(getattr(model.generation_config, "eos_token_id", None))
        if eos is None:
            eos = _first_int(getattr(config, "eos_token_id", None))
        recipe = recipe or (INT8_RECIPE if precision == Precision.INT8 else None)
        info = EngineInfo(
            engine_id=engine_id or f"{model_name}-{BACKEND}-{precision.value}-{dev.type}",
            model=model_name, backend=BACKEND, precision=precision, device=str(dev),
            device_class=device_class or ("cuda" if dev.type == "cuda" else "cpu"),
            max_batch=max_batch, max_seq_len=limit,
            vocab_size=int(config.get_text_config().vocab_size), eos_token_id=eos,
            num_layers=layers, num_kv_heads=kv_heads, head_dim=head_dim,
            kv_bytes_per_element=torch.empty((), dtype=kv_dtype).element_size(),
            extra={**(extra or {}), "architecture": type(model).__name__,
                   "torch_version": str(torch.__version__), **({"recipe": recipe} if recipe else {})},
        )  # fmt: skip
        stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        if dev.type == "cuda":  # the KV budget: most of what the weights left free
            free, _total = torch.cuda.mem_get_info(dev)
            info = replace(info, extra={**info.extra, "kv_budget_bytes": int(free * KV_FRACTION)})
        return cls(info, model, timer_factory, device=dev, kv_dtype=kv_dtype, stream=stream)

    def _groups(self, inputs: Sequence[SeqInput]) -> list[list[SeqInput]]:
        """Decode inputs as one padded batch; each prefill chunk alone (never padded)."""
        decode = [x for x in inputs if len(x.tokens) == 1]
        return ([decode] if decode else []) + [[x] for x in inputs if len(x.tokens) > 1]

    def _forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, past: Any) -> tuple[Any, Any]:
        """Last-position logits ``[B, vocab]`` and new K/V ``[L, 2, B, H, N, hd]``."""
        from transformers import DynamicCache

        torch = self.torch
        cache: Any = DynamicCache()
        if past.shape[4] > 0:
            for i in range(past.shape[0]):
                cache.update(past[i, 0], past[i, 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{_cache_kwarg(self.model): cache},
        )
        n = input_ids.shape[1]  # the model appended the new K/V to ``cache`` in place
        new_kv = torch.stack(
            [torch.stack([layer.keys[:, :, -n:], layer.values[:, :, -n:]]) for layer in cache.layers]
        )
        return out.logits[:, -1], new_kv


def _probe_kv(torch: Any, model: Any, device: Any) -> tuple[int, int, int, Any]:
    """(layers, KV heads, head size, dtype) of the cache one token leaves behind."""
    from transformers import DynamicCache

    cache: Any = DynamicCache()
    with torch.inference_mode():
        model(
            input_ids=torch.zeros((1, 1), dtype=torch.long, device=device),
            use_cache=True,
            logits_to_keep=1,
            **{_cache_kwarg(model): cache},
        )
    layers = list(cache.layers)
    shapes = {tuple(layer.keys.shape) for layer in layers}
    if not layers or len(shapes) != 1:
        raise ConfigError(
            f"{type(model).__name__} keeps KV caches of {len(shapes)} shapes across layers; the "
            "transformers engine holds one shape per model; serve a model with uniform layers"
        )
    _, heads, _, head_dim = next(iter(shapes))
    return len(layers), int(heads), int(head_dim), layers[0].keys.dtype


def _cache_kwarg(model: Any) -> str:
    """The forward argument that takes the cache: ``cache`` in newer transformers."""
    name = getattr(model, "_infermeter_cache_kwarg", None)
    if name is None:
        params = inspect.signature(model.forward).parameters
        name = "cache" if "cache" in params else "past_key_values"
        model._infermeter_cache_kwarg = name
    return str(name)


def _context(config: Any) -> int:
    text = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return DEFAULT_MAX_SEQ_LEN


def _first_int(value: Any) -> int | None:
    if isinstance(value, list | tuple) and value:
        value = value[0]
    return value if isinstance(value, int) else None


def _saved_name(model_dir: Path) -> str:
    try:
        data = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    name = data.get("infermeter_name") if isinstance(data, dict) else None
    return str(name) if isinstance(name, str) and name else model_dir.name


__all__ = [
    "BACKEND",
    "CPU_PRECISIONS",
    "CUDA_PRECISIONS",
    "HFEngine",
    "check_precision",
    "load_causal_lm",
    "precisions_for",
    "quantize_fp8",
    "quantize_int8",
    "require_int8_kernel",
]
