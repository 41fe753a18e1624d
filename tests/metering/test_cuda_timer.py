"""CUDA event step timer: pooled events read at the step's own sync, never a synchronize."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from infermeter.core.errors import ConfigError, EngineError
from infermeter.metering.cuda_timer import CudaEventTimer


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


needs_cuda = pytest.mark.skipif(not _cuda(), reason="needs PyTorch with a CUDA device")


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PyTorch the error names pip install 'infermeter[torch]'."""

    def missing(name: str) -> Any:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ConfigError, match=r"pip install 'infermeter\[torch\]'"):
        CudaEventTimer()


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or _cuda(), reason="needs PyTorch without a CUDA device"
)
def test_no_cuda_device_is_a_clear_error() -> None:
    """PyTorch without a GPU: a ConfigError pointing to the CPU step timer."""
    with pytest.raises(ConfigError, match="CpuStepTimer"):
        CudaEventTimer()


@needs_cuda
def test_elapsed_is_read_after_the_steps_own_sync_without_synchronize(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """begin/end/elapsed never synchronize; after the .cpu() copy the time is there."""
    import torch

    stream = torch.cuda.Stream()
    timer = CudaEventTimer(stream, pool_size=2)
    x = torch.randn(2048, 2048, device="cuda")

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("metering called synchronize")

    monkeypatch.setattr(torch.cuda, "synchronize", forbidden)
    monkeypatch.setattr(torch.cuda.Stream, "synchronize", forbidden)
    monkeypatch.setattr(torch.cuda.Event, "synchronize", forbidden)
    readings = []
    for _ in range(5):  # more steps than pool slots: pairs are reused
        with torch.cuda.stream(stream):
            timer.begin()
            y = x @ x
            timer.end()
            y[0, 0].cpu()  # the engine's own sync point
        assert timer.ready()
        readings.append(timer.elapsed_us())
    assert all(r > 0 for r in readings)


@needs_cuda
def test_reading_before_the_sync_raises_instead_of_blocking() -> None:
    """Read before the step finished: EngineError (a query, not a wait); fine after the sync."""
    import torch

    stream = torch.cuda.Stream()
    timer = CudaEventTimer(stream)
    with torch.cuda.stream(stream):
        timer.begin()
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU spin
        timer.end()
        if not timer.ready():
            with pytest.raises(EngineError, match="after the engine's own sync point"):
                timer.elapsed_us()
        torch.zeros(1, device="cuda").cpu()
    assert timer.elapsed_us() >= 10_000


@needs_cuda
def test_pipelined_steps_are_harvested_by_slot() -> None:
    """With pool_size >= 2 the next step may begin before the previous one is read."""
    import torch

    stream = torch.cuda.Stream()
    timer = CudaEventTimer(stream, pool_size=2)
    with torch.cuda.stream(stream):
        timer.begin()
        torch.cuda._sleep(20_000_000)
        timer.end()
        first = timer.current_slot
        timer.begin()
        torch.cuda._sleep(1_000)
        timer.end()
        torch.zeros(1, device="cuda").cpu()
    assert first is not None
    assert timer.elapsed_us_of(first) > timer.elapsed_us()
