"""Sampler sources: the scripted source, NVML/GPM and DCGM through fakes, real ones if present."""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace
from typing import Any

import pytest

from infermeter.core.errors import ConfigError, Unavailable
from infermeter.metering import sources
from infermeter.metering.sources import (
    DCGM_FI_DEV_FB_USED,
    DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
    DCGM_FI_PROF_DRAM_ACTIVE,
    DCGM_FI_PROF_PIPE_TENSOR_ACTIVE,
    DCGM_FI_PROF_SM_ACTIVE,
    DcgmSource,
    NvmlSource,
    Sample,
    ScriptedSource,
    dcgm_available,
    make_source,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


def test_scripted_energy_grows_at_its_power() -> None:
    """Model mode: 150 W for 100 ms adds 15,000 mJ; activities start on the second read."""
    clock = Clock()
    src = ScriptedSource(clock=clock, power_mw=150_000)
    first = src.read()
    clock.now += 100_000_000
    second = src.read()
    assert first.sm_activity is None and first.energy_mj == 0
    assert second.energy_mj == 15_000
    assert (second.sm_activity, second.tensor_activity, second.dram_activity) == (0.6, 0.3, 0.4)


def test_scripted_replay_in_order_then_a_clear_error() -> None:
    """Replay mode returns the given samples in order and names the fix when they run out."""
    samples = [Sample(0, 0), Sample(100, 5, 0.5, 0.1, 0.2, 10)]
    src = ScriptedSource(samples=samples)
    assert [src.read(), src.read()] == samples
    with pytest.raises(ConfigError, match="ran out of samples after 2 reads"):
        src.read()


def test_make_source_by_setting() -> None:
    """'none' gives no source, 'scripted' a ScriptedSource, an unknown name a ConfigError."""
    assert make_source("none") is None
    assert isinstance(make_source("scripted"), ScriptedSource)
    with pytest.raises(ConfigError, match="use one of none, scripted, nvml, dcgm"):
        make_source("tpu")


class FakeNvml:
    """Enough of pynvml's GPM surface to drive NvmlSource: values are percentages."""

    NVML_SUCCESS = 0
    NVML_GPM_METRICS_GET_VERSION = 1
    NVML_GPM_METRIC_SM_UTIL = 2
    NVML_GPM_METRIC_ANY_TENSOR_UTIL = 5
    NVML_GPM_METRIC_DRAM_BW_UTIL = 10

    def __init__(self, gpm: bool = True, values: dict[int, float] | None = None) -> None:
        self.gpm = gpm
        self.values = values or {2: 96.25, 5: 93.5, 10: 100.4}
        self.energy = 1_000
        self.shutdowns = 0
        self.freed = 0
        self.gets: list[Any] = []

        metric = type("Metric", (), {"metricId": 0, "value": 0.0, "nvmlReturn": 0})

        class Get:
            def __init__(self) -> None:
                self.metrics = [metric() for _ in range(8)]

        self.c_nvmlGpmMetricsGet_t = Get

    def nvmlInit(self) -> None:
        return None

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceGetName(self, handle: str) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlGpmQueryDeviceSupport(self, handle: str) -> Any:
        return SimpleNamespace(isSupportedDevice=int(self.gpm))

    def nvmlGpmSampleAlloc(self) -> Any:
        return SimpleNamespace(taken=0)

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        self.freed += 1

    def nvmlGpmSampleGet(self, handle: str, sample: Any) -> None:
        sample.taken += 1

    def nvmlGpmMetricsGet(self, get: Any) -> Any:
        self.gets.append(get)
        for metric in get.metrics[: get.numMetrics]:
            metric.value = self.values.get(metric.metricId, math.nan)
        return get

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        self.energy += 8_200
        return self.energy

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        return SimpleNamespace(used=3 << 30, total=80 << 30)


def test_nvml_source_reads_energy_memory_and_gpm_ratios() -> None:
    """Energy in mJ, memory in MiB, GPM percentages as ratios (overshoot clamped to 1)."""
    nv = FakeNvml()
    src = NvmlSource(0, nvml=nv)
    first, second = src.read(), src.read()
    assert src.device == "NVIDIA H100 80GB HBM3" and src.gpm
    assert first.sm_activity is None  # one GPM snapshot is not an interval yet
    assert second.energy_mj - first.energy_mj == 8_200
    assert second.memory_used_mb == 3072
    assert second.sm_activity == pytest.approx(0.9625)
    assert second.tensor_activity == pytest.approx(0.935)
    assert second.dram_activity == 1.0
    get = nv.gets[0]
    assert get.version == 1 and get.numMetrics == 3
    assert [m.metricId for m in get.metrics[:3]] == [2, 5, 10]
    assert get.sample1 is not get.sample2
    src.close()
    assert nv.freed == 2 and nv.shutdowns == 1


def test_nvml_source_passes_nan_through_for_the_guard() -> None:
    """A metric GPM could not compute comes back NaN, for the sampler to reject."""
    src = NvmlSource(0, nvml=FakeNvml(values={2: 0.0}))
    src.read()
    sample = src.read()
    assert sample.sm_activity == 0.0
    assert sample.dram_activity is not None and math.isnan(sample.dram_activity)


def test_nvml_without_gpm_meters_energy_only() -> None:
    """A pre-Hopper device: no activities (None), energy and memory still read."""
    src = NvmlSource(0, nvml=FakeNvml(gpm=False))
    src.read()
    sample = src.read()
    assert (sample.sm_activity, sample.tensor_activity, sample.dram_activity) == (None, None, None)
    assert sample.energy_mj > 0


def test_nvml_missing_bindings_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nvidia-ml-py the error names pip install 'infermeter[gpu]'."""

    def missing(name: str) -> Any:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ConfigError, match=r"pip install 'infermeter\[gpu\]'"):
        NvmlSource(0)


def test_dcgm_source_maps_its_fields() -> None:
    """DCGM's fields 1002/1004/1005 (ratios), 156 (mJ) and 252 (MiB) fill a Sample."""
    values = {
        DCGM_FI_PROF_SM_ACTIVE: 0.8,
        DCGM_FI_PROF_PIPE_TENSOR_ACTIVE: 0.5,
        DCGM_FI_PROF_DRAM_ACTIVE: 0.25,
        DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION: 123_456,
        DCGM_FI_DEV_FB_USED: 2048,
    }
    reader = SimpleNamespace(GetLatestGpuValuesAsFieldIdDict=lambda: {0: values})
    sample = DcgmSource(0, reader=reader).read()
    assert (sample.sm_activity, sample.tensor_activity, sample.dram_activity) == (0.8, 0.5, 0.25)
    assert (sample.energy_mj, sample.memory_used_mb) == (123_456, 2048)


@pytest.mark.skipif(not dcgm_available(), reason="DCGM's Python bindings (DcgmReader) are absent")
def test_real_dcgm_reads() -> None:
    """With DCGM and nv-hostengine present, a real read yields a Sample."""
    src = DcgmSource(0)
    try:
        assert isinstance(src.read(), Sample)
    finally:
        src.close()


def _nvml_device() -> bool:
    if importlib.util.find_spec("pynvml") is None:
        return False
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _nvml_device(), reason="no NVML: nvidia-ml-py or an NVIDIA driver absent")
def test_real_nvml_energy_counter_is_monotonic() -> None:
    """On a real GPU the energy counter never goes backwards between two reads."""
    src = NvmlSource(0)
    try:
        a, b = src.read(), src.read()
        assert b.energy_mj >= a.energy_mj and b.timestamp_ns > a.timestamp_ns
    finally:
        src.close()


@pytest.mark.parametrize("missing", ["absent", "blank"])
def test_dcgm_without_an_energy_reading_is_a_failed_read_never_zero(missing: str) -> None:
    """No energy value (or DCGM's blank sentinel) raises, so the sampler skips the tick."""
    values: dict[int, Any] = {DCGM_FI_PROF_SM_ACTIVE: 0.5, DCGM_FI_DEV_FB_USED: 10}
    if missing == "blank":
        values[DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION] = sources.DCGM_INT64_BLANK
    reader = SimpleNamespace(GetLatestGpuValuesAsFieldIdDict=lambda: {0: values})
    with pytest.raises(Unavailable, match="no energy reading"):
        DcgmSource(0, reader=reader).read()


def test_dcgm_gpu_is_found_by_uuid_not_by_number() -> None:
    """CUDA's device 0 may be DCGM's gpu 1: the source reads the gpu whose UUID matches."""
    per_gpu = {
        0: {DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION: 111},
        1: {DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION: 222},
    }
    reader = SimpleNamespace(GetLatestGpuValuesAsFieldIdDict=lambda: per_gpu)
    src = DcgmSource(reader=reader, device_uuid="GPU-bbb", uuids={0: "GPU-aaa", 1: "GPU-bbb"})
    assert src.read().energy_mj == 222
    with pytest.raises(ConfigError, match="no GPU with UUID GPU-ccc"):
        DcgmSource(reader=reader, device_uuid="GPU-ccc", uuids={0: "GPU-aaa", 1: "GPU-bbb"})


def test_cuda_device_uuid_follows_cuda_visible_devices() -> None:
    """CUDA device 0 under CUDA_VISIBLE_DEVICES=2,0 is NVML's device 2; a UUID entry is taken as is."""
    nvml = SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}".encode(),
    )
    assert sources.cuda_device_uuid(0, nvml=nvml, env={"CUDA_VISIBLE_DEVICES": "2,0"}) == "GPU-2"
    assert sources.cuda_device_uuid(1, nvml=nvml, env={}) == "GPU-1"
    assert sources.cuda_device_uuid(0, nvml=nvml, env={"CUDA_VISIBLE_DEVICES": "GPU-x"}) == "GPU-x"
