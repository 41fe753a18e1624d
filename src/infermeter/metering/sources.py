"""Where the window sampler's readings come from: NVML (+GPM), DCGM, or a script.

A source is read by the sampler thread only, once per window: the NVML energy counter costs
~4 ms a read (measured; docs/metering.md), so it never sits on the request path.

Every ``Sample`` carries the energy counter's *cumulative* value and the activities averaged
over the interval since the previous read (None for the first read, or when the device has
no such counter). Activities are ratios in [0, 1]; NaN is passed through for the sampler's
guard to reject (GPM answers windows under 100 ms with 0 or NaN and a success code).
"""

from __future__ import annotations

import importlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from infermeter.core.errors import ConfigError, Unavailable

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading: monotonic ns, cumulative energy (mJ), interval activities, memory (MiB)."""

    timestamp_ns: int
    energy_mj: int
    sm_activity: float | None = None
    tensor_activity: float | None = None
    dram_activity: float | None = None
    memory_used_mb: int | None = None


class SampleSource(Protocol):
    """A device reading, taken by the sampler thread once per window."""

    name: str
    device: str  # the device name, e.g. "NVIDIA H100 80GB HBM3" or "scripted"
    idle_power_mw: int | None  # a hint for the sampler's idle estimate; None = learn it

    def read(self) -> Sample: ...

    def close(self) -> None: ...


def _ratio(percent: float) -> float:
    """A GPM percentage as a ratio; NaN stays NaN, rounding overshoot is clamped to [0, 1]."""
    if math.isnan(percent):
        return percent
    return min(1.0, max(0.0, percent / 100.0))


class ScriptedSource:
    """A deterministic source for tests and demos (no device needed).

    Replay mode (``samples=``): ``read()`` returns the given samples in order and raises
    ``ConfigError`` when they run out. Model mode (default): the energy counter grows at
    ``power_mw`` over ``clock`` (monotonic ns), activities are constant.
    """

    def __init__(
        self,
        *,
        samples: Iterable[Sample] | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        power_mw: int = 150_000,
        idle_power_mw: int | None = 80_000,
        sm_activity: float | None = 0.6,
        tensor_activity: float | None = 0.3,
        dram_activity: float | None = 0.4,
        memory_used_mb: int | None = 1024,
        name: str = "scripted",
    ) -> None:
        self.name = name
        self.device = "scripted"
        self.idle_power_mw = idle_power_mw
        self._replay: Iterator[Sample] | None = iter(samples) if samples is not None else None
        self._clock = clock
        self._power_mw = power_mw
        self._activities = (sm_activity, tensor_activity, dram_activity)
        self._memory = memory_used_mb
        self._t0: int | None = None
        self.reads = 0
        self.read_threads: set[int] = set()  # lets tests check who reads the energy counter

    def read(self) -> Sample:
        import threading

        self.reads += 1
        self.read_threads.add(threading.get_ident())
        if self._replay is not None:
            try:
                return next(self._replay)
            except StopIteration:
                raise ConfigError(
                    f"scripted source {self.name!r} ran out of samples after {self.reads - 1} "
                    "reads; give more samples or use the power model (samples=None)"
                ) from None
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
            sm = tensor = dram = None
        else:
            sm, tensor, dram = self._activities
        energy = self._power_mw * (now - self._t0) // 1_000_000_000  # mW x ns -> mJ
        return Sample(now, energy, sm, tensor, dram, self._memory)

    def close(self) -> None:
        return None


def _import_pynvml() -> Any:
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise ConfigError(
            "sampler 'nvml' needs NVML's Python bindings: pip install 'infermeter[gpu]' "
            "(nvidia-ml-py), or set sampler=none"
        ) from exc


class NvmlSource:
    """NVML energy counter and memory, plus GPM SM / tensor / DRAM activity where supported.

    GPM (Hopper and newer) computes metrics between two ``nvmlGpmSampleGet`` snapshots; this
    source keeps the previous snapshot and reports the interval since the last read. On a
    device without GPM the activities are None (the window's energy is still metered).
    """

    def __init__(self, index: int = 0, *, nvml: Any | None = None) -> None:
        nv = nvml if nvml is not None else _import_pynvml()
        self._nv = nv
        nv.nvmlInit()
        try:
            self._handle = nv.nvmlDeviceGetHandleByIndex(index)
            name = nv.nvmlDeviceGetName(self._handle)
            self.device = name.decode() if isinstance(name, bytes) else str(name)
            self.name = f"nvml:{index}"
            self.idle_power_mw: int | None = None
            self.gpm = self._gpm_supported()
            self._samples: list[Any] = []
            if self.gpm:
                self._samples = [nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()]
            self._have_prev = False
            self._metric_ids = (
                nv.NVML_GPM_METRIC_SM_UTIL,
                nv.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
                nv.NVML_GPM_METRIC_DRAM_BW_UTIL,
            )
        except Exception:
            nv.nvmlShutdown()
            raise

    def _gpm_supported(self) -> bool:
        try:
            support = self._nv.nvmlGpmQueryDeviceSupport(self._handle)
        except Exception:  # NVMLError_NotSupported, or a library without GPM symbols
            return False
        return bool(getattr(support, "isSupportedDevice", 0))

    def read(self) -> Sample:
        nv, handle = self._nv, self._handle
        now = time.monotonic_ns()
        energy = int(nv.nvmlDeviceGetTotalEnergyConsumption(handle))  # mJ; ~4 ms per call
        memory = int(nv.nvmlDeviceGetMemoryInfo(handle).used) // MIB
        sm = tensor = dram = None
        if self.gpm:
            prev, cur = self._samples
            nv.nvmlGpmSampleGet(handle, cur)
            if self._have_prev:
                sm, tensor, dram = self._metrics(prev, cur)
            self._samples = [cur, prev]
            self._have_prev = True
        return Sample(now, energy, sm, tensor, dram, memory)

    def _metrics(self, first: Any, second: Any) -> tuple[float, float, float]:
        nv = self._nv
        get = nv.c_nvmlGpmMetricsGet_t()
        get.version = nv.NVML_GPM_METRICS_GET_VERSION
        get.numMetrics = len(self._metric_ids)
        get.sample1 = first
        get.sample2 = second
        for slot, metric_id in enumerate(self._metric_ids):
            get.metrics[slot].metricId = metric_id
        nv.nvmlGpmMetricsGet(get)
        values: list[float] = []
        for slot in range(len(self._metric_ids)):
            metric = get.metrics[slot]
            ok = int(getattr(metric, "nvmlReturn", 0)) == nv.NVML_SUCCESS
            values.append(_ratio(float(metric.value)) if ok else math.nan)
        return values[0], values[1], values[2]

    def close(self) -> None:
        for sample in self._samples:
            try:
                self._nv.nvmlGpmSampleFree(sample)
            except Exception:  # freeing is best effort at shutdown
                pass
        self._samples = []
        self._nv.nvmlShutdown()


# DCGM field ids (dcgm_fields.h, DCGM 4.x)
DCGM_FI_DEV_POWER_USAGE = 155
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION = 156
DCGM_FI_DEV_FB_USED = 252
DCGM_FI_PROF_SM_ACTIVE = 1002
DCGM_FI_PROF_PIPE_TENSOR_ACTIVE = 1004
DCGM_FI_PROF_DRAM_ACTIVE = 1005
DCGM_FIELDS = (
    DCGM_FI_DEV_POWER_USAGE,
    DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
    DCGM_FI_DEV_FB_USED,
    DCGM_FI_PROF_SM_ACTIVE,
    DCGM_FI_PROF_PIPE_TENSOR_ACTIVE,
    DCGM_FI_PROF_DRAM_ACTIVE,
)


def dcgm_available() -> bool:
    """True when DCGM's Python bindings (DcgmReader, from the DCGM package) import."""
    try:
        importlib.import_module("DcgmReader")
    except Exception:  # the bindings load libdcgm at import; any failure means unavailable
        return False
    return True


# DCGM's "blank" sentinels (dcgm_structs.h): a value at or above them means "no reading".
DCGM_INT64_BLANK = 0x7FFFFFFFFFFFFFF0
DCGM_FP64_BLANK = 140737488355328.0


def _dcgm_value(values: dict[int, Any], field: int) -> float | None:
    """A field's latest value; None when DCGM has none or reports its blank sentinel."""
    value = values.get(field)
    if value is None:
        return None
    number = float(value)
    if isinstance(value, int) and value >= DCGM_INT64_BLANK:
        return None
    return None if number >= DCGM_FP64_BLANK else number


def _reader_uuids(reader: Any) -> dict[int, str]:
    """DCGM gpu id → UUID, through DcgmReader's system handle. [unverified: no DCGM here]"""
    discovery = reader.m_dcgmSystem.discovery
    return {
        int(gpu): str(discovery.GetGpuAttributes(gpu).identifiers.uuid)
        for gpu in discovery.GetAllSupportedGpuIds()
    }


def cuda_device_uuid(index: int = 0, *, nvml: Any | None = None, env: dict[str, str] | None = None) -> str:
    """The UUID of CUDA device ``index``, honouring CUDA_VISIBLE_DEVICES (ids or UUIDs).

    NVML numbers GPUs in PCI order, as DCGM does; CUDA_VISIBLE_DEVICES renumbers them for
    the process. The UUID is the one name every layer agrees on.
    """
    visible = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES", "").strip()
    physical = index
    if visible:
        entries = [v.strip() for v in visible.split(",") if v.strip()]
        if index >= len(entries):
            raise ConfigError(f"CUDA device {index} is not in CUDA_VISIBLE_DEVICES={visible!r}")
        if entries[index].startswith(("GPU-", "MIG-")):
            return entries[index]
        physical = int(entries[index])
    nv = nvml if nvml is not None else _import_pynvml()
    nv.nvmlInit()
    try:
        uuid = nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByIndex(physical))
    finally:
        nv.nvmlShutdown()
    return uuid.decode() if isinstance(uuid, bytes) else str(uuid)


class DcgmSource:
    """DCGM's profiling fields (SM / tensor / DRAM active) and energy, through nv-hostengine.

    Needs DCGM installed with its Python bindings on ``PYTHONPATH`` (they ship with DCGM,
    e.g. /usr/share/datacenter-gpu-manager-4/bindings/python3) and a running nv-hostengine.
    DCGM averages profiling fields over its own update interval (``update_ms``, minimum
    100 ms), so the activities are DCGM's latest values, not exactly this window's.

    The GPU is found by UUID (``device_uuid``; ``uuids`` maps DCGM gpu ids to UUIDs, read
    from DCGM when not given), since DCGM's ids need not be CUDA's device numbers. A read
    without the energy counter is a failed read (``Unavailable``): the sampler skips the tick
    and the next window spans the gap. It is never 0, which would charge the next window
    with the GPU's whole energy since the driver loaded.
    """

    def __init__(
        self,
        gpu_id: int = 0,
        *,
        update_ms: int = 100,
        reader: Any | None = None,
        device_uuid: str | None = None,
        uuids: dict[int, str] | None = None,
    ) -> None:
        if reader is None:
            try:
                module = importlib.import_module("DcgmReader")
            except Exception as exc:
                raise ConfigError(
                    "sampler 'dcgm' needs DCGM and its Python bindings (DcgmReader) on "
                    "PYTHONPATH, with nv-hostengine running; or use sampler=nvml"
                ) from exc
            reader = module.DcgmReader(
                fieldIds=list(DCGM_FIELDS),
                updateFrequency=max(100, update_ms) * 1000,
                gpuIds=None if device_uuid is not None else [gpu_id],
            )
            reader.Init()  # loads libdcgm and connects to nv-hostengine
        if device_uuid is not None:
            known = uuids if uuids is not None else _reader_uuids(reader)
            matches = [gpu for gpu, uuid in known.items() if uuid == device_uuid]
            if not matches:
                raise ConfigError(
                    f"DCGM has no GPU with UUID {device_uuid}; it sees "
                    f"{', '.join(f'{g}={u}' for g, u in sorted(known.items())) or 'none'}: "
                    "run nv-hostengine on the host of this device, or use sampler=nvml"
                )
            gpu_id = matches[0]
        self._reader = reader
        self._gpu = gpu_id
        self.name = f"dcgm:{gpu_id}"
        self.device = f"dcgm gpu {gpu_id}" + (f" ({device_uuid})" if device_uuid else "")
        self.idle_power_mw: int | None = None

    def read(self) -> Sample:
        now = time.monotonic_ns()
        values: dict[int, Any] = self._reader.GetLatestGpuValuesAsFieldIdDict().get(self._gpu, {})

        def ratio(field: int) -> float | None:
            number = _dcgm_value(values, field)
            if number is None:
                return None
            return number if math.isnan(number) else min(1.0, max(0.0, number))

        energy = _dcgm_value(values, DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION)
        if energy is None or math.isnan(energy):
            raise Unavailable(
                f"DCGM gave no energy reading (field {DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION}) for GPU "
                f"{self._gpu}; this window is skipped and the next spans it. If it persists, check "
                "that nv-hostengine watches the field (dcgmi dmon -e 156)"
            )
        memory = _dcgm_value(values, DCGM_FI_DEV_FB_USED)
        return Sample(
            now,
            int(energy),
            ratio(DCGM_FI_PROF_SM_ACTIVE),
            ratio(DCGM_FI_PROF_PIPE_TENSOR_ACTIVE),
            ratio(DCGM_FI_PROF_DRAM_ACTIVE),
            int(memory) if memory is not None else None,
        )

    def close(self) -> None:
        shutdown = getattr(self._reader, "Shutdown", None)
        if shutdown is not None:
            shutdown()


SOURCE_KINDS = ("none", "scripted", "nvml", "dcgm")


def make_source(kind: str, *, device_index: int = 0) -> SampleSource | None:
    """The source a ``sampler`` setting names; None for "none"."""
    if kind == "none":
        return None
    if kind == "scripted":
        return ScriptedSource()
    if kind == "nvml":
        return NvmlSource(device_index)
    if kind == "dcgm":
        return DcgmSource(device_uuid=cuda_device_uuid(device_index))
    raise ConfigError(f"sampler={kind!r} is unknown; use one of {', '.join(SOURCE_KINDS)}")


__all__ = [
    "DCGM_FIELDS",
    "SOURCE_KINDS",
    "DcgmSource",
    "NvmlSource",
    "Sample",
    "SampleSource",
    "ScriptedSource",
    "cuda_device_uuid",
    "dcgm_available",
    "make_source",
]
