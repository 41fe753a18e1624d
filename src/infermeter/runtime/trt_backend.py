"""TensorRT engine: a serialized plan run with ``execute_async_v3`` on the engine's stream.

Batching, padding and the device-resident KV cache are ``torch_batching``'s (shared with
``TorchEngine``); this class runs one padded group through the plan:

- the optimization profile is the smallest one admitting the group's shape
  (``profiles.select_profile``, same order as built), switched with
  ``set_optimization_profile_async`` on the engine's own stream only when it changes;
- every input's shape is set (``set_input_shape``, checked) and its address bound, empty
  tensors (past length 0) get a non-null dummy address; outputs are sized from
  ``get_tensor_shape`` after all inputs are set and allocated on the device;
- the execution context uses ``USER_MANAGED`` device memory: ``device_memory_size_v2``
  bytes allocated by this engine, so the context's scratch memory is known exactly
  (``info.extra["context_device_bytes"]``);
- the step timer (a CUDA-event timer from the caller's factory) records on the same stream.

API of TensorRT 10.12+/11 (NVIDIA's TensorRT Python API reference). Not run here (no TensorRT on the
development machines): its tests skip with the reason where TensorRT or a GPU is absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infermeter.core.errors import EngineError, StaleEngine
from infermeter.core.types import Precision
from infermeter.runtime.compile.profiles import select_profile
from infermeter.runtime.compile.tensorrt_builder import import_tensorrt, recording_logger
from infermeter.runtime.engine import EngineInfo, ShapeProfile
from infermeter.runtime.torch_batching import PaddedKVEngine, TimerFactory, import_torch

PLAN_FILE = "model.plan"


def torch_dtype(trt: Any, torch: Any, dtype: Any) -> Any:
    """The torch dtype of a TensorRT tensor dtype; EngineError for one torch lacks."""
    table = {
        trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16, trt.DataType.INT64: torch.int64,
        trt.DataType.INT32: torch.int32, trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool, trt.DataType.UINT8: torch.uint8,
    }  # fmt: skip
    if dtype not in table:
        raise EngineError(
            f"TensorRT I/O dtype {dtype} has no torch equivalent; export the "
            "model with float/half/int64 inputs and outputs"
        )
    return table[dtype]


class TrtEngine(PaddedKVEngine):
    """The Engine protocol over one TensorRT execution context."""

    def __init__(
        self,
        info: EngineInfo,
        timer_factory: TimerFactory,
        *,
        trt: Any,
        runtime: Any,
        engine: Any,
        logger: Any,
        device: Any,
        stream: Any,
    ) -> None:
        torch = import_torch()
        self._trt, self._runtime, self._engine, self._logger = trt, runtime, engine, logger
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: torch_dtype(trt, torch, engine.get_tensor_dtype(n)) for n in names}
        super().__init__(
            info,
            timer_factory(stream),
            device=device,
            kv_dtype=self._dtypes["past_key_values.0.key"],
            stream=stream,
        )
        self._context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        size = int(engine.device_memory_size_v2)
        # 256-byte-aligned per-context scratch; torch's allocator aligns to 512 bytes
        self._scratch = torch.empty(max(size, 1), dtype=torch.uint8, device=device)
        self._context.set_device_memory(self._scratch.data_ptr(), size)
        self._dummy = torch.zeros(16, dtype=torch.uint8, device=device)  # for empty tensors
        self._active: int | None = None
        self._handle = int(stream.cuda_stream)  # the raw cudaStream_t TensorRT enqueues on
        self.info.extra["context_device_bytes"] = size

    @classmethod
    def load(
        cls,
        engine_dir: Path,
        *,
        precision: Precision,
        timer_factory: TimerFactory,
        dims: Mapping[str, Any],
        profiles: Sequence[ShapeProfile],
        model: str,
        engine_id: str,
        max_batch: int,
        max_seq_len: int,
        device_index: int = 0,
        device_class: str = "cuda",
        rebuild_hint: str = "rebuild it with `infermeter engines build --backend tensorrt`",
    ) -> TrtEngine:
        """Deserialize ``engine_dir/model.plan``; ``dims`` are the decoder sizes the build
        recorded (num_layers, num_kv_heads, head_dim, vocab_size, eos_token_id)."""
        trt, torch = import_tensorrt(), import_torch()
        logger = recording_logger(trt)
        runtime = trt.Runtime(logger)
        plan = (Path(engine_dir) / PLAN_FILE).read_bytes()
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise StaleEngine(
                f"TensorRT {trt.__version__} cannot load the plan of engine "
                f"{engine_id}: {'; '.join(logger.errors)}; {rebuild_hint}"
            )
        if engine.num_optimization_profiles != len(profiles):
            raise StaleEngine(
                f"engine {engine_id}'s plan has {engine.num_optimization_profiles} "
                f"profiles, its metadata {len(profiles)}; {rebuild_hint}"
            )
        device = torch.device("cuda", device_index)
        info = EngineInfo(
            engine_id=engine_id, model=model, backend="tensorrt", precision=precision,
            device=str(device), device_class=device_class, max_batch=max_batch,
            max_seq_len=max_seq_len, vocab_size=int(dims["vocab_size"]),
            eos_token_id=dims.get("eos_token_id"), num_layers=int(dims["num_layers"]),
            num_kv_heads=int(dims["num_kv_heads"]), head_dim=int(dims["head_dim"]),
            kv_bytes_per_element=int(dims.get("kv_bytes_per_element", 2)),
            profiles=tuple(profiles),
            extra={"model_dir": str(engine_dir), "tensorrt_version": str(trt.__version__)},
        )  # fmt: skip
        return cls(
            info,
            timer_factory,
            trt=trt,
            runtime=runtime,
            engine=engine,
            logger=logger,
            device=device,
            stream=torch.cuda.Stream(device),
        )

    def _forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, past: Any) -> tuple[Any, Any]:
        torch, ctx, info = self.torch, self._context, self.info
        b, n = input_ids.shape
        p = int(past.shape[4])
        index = select_profile(info.profiles, b, n, p)
        if index is None:
            raise EngineError(
                f"engine {info.engine_id} has no optimization profile for batch {b}, {n} new "
                f"tokens after {p} cached; profiles: "
                + ", ".join(
                    f"{q.name} (batch ≤{q.max_batch}, tokens ≤{q.max_tokens}, past ≤{q.max_past})"
                    for q in info.profiles
                )
            )
        handle = self._handle
        if index != self._active:
            ctx.set_optimization_profile_async(index, handle)  # raises on failure
            self._active = index
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        for layer in range(info.num_layers):
            feeds[f"past_key_values.{layer}.key"] = past[layer, 0]
            feeds[f"past_key_values.{layer}.value"] = past[layer, 1]
        keep = []  # tensors must outlive the enqueue; the step's sync comes later
        for name in self._inputs:
            tensor = feeds[name].to(self._dtypes[name]).contiguous()
            keep.append(tensor)
            if not ctx.set_input_shape(name, tuple(tensor.shape)):
                raise EngineError(
                    f"engine {info.engine_id}: shape {tuple(tensor.shape)} of "
                    f"{name} is outside optimization profile {index}"
                )
            ctx.set_tensor_address(name, self._address(tensor))
        outputs = {}
        for name in self._outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            ctx.set_tensor_address(name, self._address(outputs[name]))
        if not ctx.execute_async_v3(handle):
            raise EngineError(
                f"engine {info.engine_id}: execute_async_v3 failed: {'; '.join(self._logger.errors[-3:])}"
            )
        new_kv = torch.stack([
            torch.stack([outputs[f"present.{layer}.key"][:, :, p:],
                         outputs[f"present.{layer}.value"][:, :, p:]])
            for layer in range(info.num_layers)
        ])  # fmt: skip
        return outputs["logits"][:, -1], new_kv

    def _address(self, tensor: Any) -> int:
        """Device address of ``tensor``; empty tensors still need a non-null one."""
        return int(tensor.data_ptr() if tensor.numel() else self._dummy.data_ptr())

    def close(self) -> None:
        super().close()
        self._context = None
        self._engine = None


__all__ = ["PLAN_FILE", "TrtEngine", "torch_dtype"]
