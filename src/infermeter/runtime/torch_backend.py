"""PyTorch engine: the built-in GPT-2 decoder in torch, FP32 on CPU, FP16/BF16 on CUDA.

It runs the same weights the ONNX builder uses (``builtin_model``'s names and shapes, read
from a model's ``model.onnx`` initializers) and computes the same function as
``build_decoder_onnx``: left-padding-safe causal mask with a finite mask value, exact GELU,
LM head tied to ``wte``. Softmax runs in FP32 whatever the weights' precision (the FP16
ONNX graph keeps it in FP32 too).

The artifact is ``weights.npz`` holding the weights already in the engine's precision
(FP16 as float16, BF16 as its raw 16 bits in uint16), written byte-for-byte
deterministically, so each precision has its own sha256. On a GPU every step runs on the
engine's own CUDA stream, which is handed to the caller's timer factory (a CUDA-event
timer records on it); see ``torch_batching`` for batching and timing.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from infermeter.core.errors import ConfigError, EngineError
from infermeter.core.types import Precision
from infermeter.runtime.builtin_model import DecoderConfig, Weights, weight_shapes
from infermeter.runtime.engine import EngineInfo
from infermeter.runtime.engine_store import RuntimeEnv, cpu_name
from infermeter.runtime.torch_batching import PaddedKVEngine, TimerFactory, import_torch

WEIGHTS_FILE = "weights.npz"
TORCH_PRECISIONS = (Precision.FP32, Precision.FP16, Precision.BF16)
_MASK_VALUE = -1.0e9
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: identical weights, identical bytes


def decoder_config(config: Mapping[str, Any]) -> DecoderConfig:
    """The DecoderConfig of a config.json written by ``DecoderConfig.hf_config``."""
    names = [f.name for f in fields(DecoderConfig)]
    missing = [n for n in names if n not in config]
    if missing:
        raise ConfigError(
            f"config.json lacks {', '.join(missing)}; the torch backend runs models in "
            "infermeter's GPT-2 layout (the built-in model or build_decoder_onnx); serve this "
            "one with --backend onnxruntime"
        )
    return DecoderConfig(**{n: config[n] for n in names})


def weights_from_onnx(path: Path, config: DecoderConfig) -> Weights:
    """The decoder's weights, read from ``path``'s initializers by their GPT-2 names."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    weights: Weights = {}
    for name, shape in weight_shapes(config).items():
        init = inits.get(name)
        array = None if init is None else numpy_helper.to_array(init)
        if array is None or tuple(array.shape) != shape:
            raise ConfigError(
                f"{path} has no initializer {name!r} of shape {shape}; the torch backend runs "
                "graphs written by build_decoder_onnx; serve this one with --backend onnxruntime"
            )
        weights[name] = np.asarray(array, np.float32)
    return weights


def save_weights(weights: Weights, path: Path, precision: Precision) -> None:
    """Write ``weights`` in ``precision`` as a deterministic ``.npz``."""
    if precision not in TORCH_PRECISIONS:
        raise ConfigError(
            f"the torch backend runs {', '.join(p.value for p in TORCH_PRECISIONS)}, not "
            f"{precision.value}; use --backend onnxruntime or tensorrt for int8"
        )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(weights):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, _encode(weights[name], precision), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH), buf.getvalue())


def _encode(array: npt.NDArray[np.float32], precision: Precision) -> npt.NDArray[Any]:
    a = np.ascontiguousarray(array, np.float32)
    if precision == Precision.FP16:
        return a.astype(np.float16)
    if precision == Precision.BF16:  # round to nearest even on the top 16 bits
        bits = a.view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return a


def torch_env(device: str) -> RuntimeEnv:
    """This process's torch on ``device`` ("cpu" or "cuda[:i]"); ConfigError if absent."""
    torch = import_torch()
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device} asked for, but torch sees no CUDA device; "
                "use --device cpu or run on a GPU machine"
            )
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        return RuntimeEnv(
            "torch", str(torch.__version__), "cuda", torch.cuda.get_device_name(index), f"{major}.{minor}"
        )
    return RuntimeEnv("torch", str(torch.__version__), "cpu", cpu_name())


class TorchEngine(PaddedKVEngine):
    """The Engine protocol over the GPT-2 decoder in torch."""

    def __init__(
        self,
        info: EngineInfo,
        config: DecoderConfig,
        weights: dict[str, Any],
        timer_factory: TimerFactory,
        *,
        device: Any,
        dtype: Any,
        stream: Any | None,
    ) -> None:
        super().__init__(info, timer_factory(stream), device=device, kv_dtype=dtype, stream=stream)
        self.config = config
        self._w = weights
        self._dtype = dtype

    @classmethod
    def load(
        cls,
        engine_dir: Path,
        *,
        precision: Precision,
        timer_factory: TimerFactory,
        device: str = "cpu",
        max_batch: int = 16,
        engine_id: str | None = None,
        model_name: str | None = None,
        device_class: str | None = None,
    ) -> TorchEngine:
        """Load ``engine_dir``'s weights.npz and config.json onto ``device``."""
        torch = import_torch()
        engine_dir = Path(engine_dir)
        try:
            config_json = json.loads((engine_dir / "config.json").read_text(encoding="utf-8"))
            npz = np.load(engine_dir / WEIGHTS_FILE)
        except (OSError, ValueError) as exc:
            raise EngineError(
                f"cannot read the torch engine in {engine_dir}: {exc}; "
                "rebuild it with `infermeter engines build --backend torch`"
            ) from exc
        config = decoder_config(config_json)
        dtype = {
            Precision.FP32: torch.float32,
            Precision.FP16: torch.float16,
            Precision.BF16: torch.bfloat16,
        }[precision]
        dev = torch.device(device)
        with npz:
            weights = {
                name[: -len(".npy")] if name.endswith(".npy") else name: _to_tensor(
                    torch, npz[name], dtype, dev
                )
                for name in npz.files
            }
        weights["lm_head"] = weights["wte"].t().contiguous()
        stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        model = model_name or str(config_json.get("name") or engine_dir.name)
        on_gpu = dev.type == "cuda"
        info = EngineInfo(
            engine_id=engine_id or f"{model}-torch-{precision.value}-{dev.type}",
            model=model, backend="torch", precision=precision, device=str(dev),
            device_class=device_class or ("cuda" if on_gpu else "cpu"),
            max_batch=max_batch, max_seq_len=config.n_positions,
            vocab_size=config.vocab_size, eos_token_id=config.eos_token_id,
            num_layers=config.n_layer, num_kv_heads=config.n_head, head_dim=config.head_dim,
            kv_bytes_per_element=torch.empty((), dtype=dtype).element_size(),
            extra={"model_dir": str(engine_dir), "torch_version": str(torch.__version__)},
        )  # fmt: skip
        return cls(info, config, weights, timer_factory, device=dev, dtype=dtype, stream=stream)

    def _forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, past: Any) -> tuple[Any, Any]:
        """Last-position logits ``[B, vocab]`` and new K/V ``[L, 2, B, H, N, hd]``."""
        torch, w, cfg = self.torch, self._w, self.config
        functional = torch.nn.functional
        b, n = input_ids.shape
        total = attention_mask.shape[1]
        h, hd, d = cfg.n_head, cfg.head_dim, cfg.n_embd
        q_idx = torch.arange(n, device=self.device)[:, None] + (total - n)
        causal = torch.arange(total, device=self.device)[None, :] <= q_idx  # [N, T]
        allowed = causal[None, None] & (attention_mask != 0)[:, None, None, :]
        zero = torch.zeros((), dtype=torch.float32, device=self.device)
        bias = torch.where(allowed, zero, zero + _MASK_VALUE)
        x = w["wte"][input_ids] + w["wpe"][position_ids]
        eps, scale = cfg.layer_norm_epsilon, 1.0 / float(np.sqrt(hd))
        new_kv = []
        for i in range(cfg.n_layer):
            p = f"h.{i}."
            a = functional.layer_norm(x, (d,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
            qkv = a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
            q, k, v = (t.reshape(b, n, h, hd).transpose(1, 2) for t in qkv.split(d, dim=-1))
            new_kv.append(torch.stack([k, v]))
            keys = torch.cat([past[i, 0], k], dim=2)
            values = torch.cat([past[i, 1], v], dim=2)
            scores = (q @ keys.transpose(-1, -2)).float() * scale + bias
            ctx = torch.softmax(scores, dim=-1).to(self._dtype) @ values
            ctx = ctx.transpose(1, 2).reshape(b, n, d)
            x = x + ctx @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
            m = functional.layer_norm(x, (d,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
            m = functional.gelu(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
            x = x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        last = functional.layer_norm(x[:, -1], (d,), w["ln_f.weight"], w["ln_f.bias"], eps)
        return last @ w["lm_head"], torch.stack(new_kv)


def _to_tensor(torch: Any, array: npt.NDArray[Any], dtype: Any, device: Any) -> Any:
    if array.dtype == np.uint16:  # BF16 bits: reinterpret, do not convert
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)


__all__ = [
    "TORCH_PRECISIONS",
    "WEIGHTS_FILE",
    "TorchEngine",
    "decoder_config",
    "save_weights",
    "torch_env",
    "weights_from_onnx",
]
