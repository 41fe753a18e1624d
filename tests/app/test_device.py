"""`serve --device`: one worker per device; cuda:N pins the process to GPU N."""

from __future__ import annotations

import pytest

from infermeter.app.engines import pin_device
from infermeter.config import load_settings
from infermeter.core.errors import ConfigError


def test_cuda_n_makes_gpu_n_the_only_visible_one() -> None:
    """cuda:1 sets CUDA_VISIBLE_DEVICES=1; the engines' device is then plain "cuda"."""
    env: dict[str, str] = {}
    assert pin_device("cuda:1", env) == "cuda" and env["CUDA_VISIBLE_DEVICES"] == "1"


def test_cuda_n_counts_within_an_existing_visible_set() -> None:
    """With CUDA_VISIBLE_DEVICES=2,3 already set, cuda:1 is GPU 3; cuda:2 is refused by name."""
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert pin_device("cuda:1", env) == "cuda" and env["CUDA_VISIBLE_DEVICES"] == "3"
    with pytest.raises(ConfigError, match=r"cuda:0 … cuda:0"):
        pin_device("cuda:2", {"CUDA_VISIBLE_DEVICES": "5"})


def test_cpu_changes_nothing() -> None:
    """cpu keeps the CPU engines and leaves the GPUs alone."""
    env: dict[str, str] = {}
    assert pin_device("cpu", env) == "cpu" and env == {}


@pytest.mark.parametrize("bad", ["gpu0", "cuda:x", "cuda:-1", "tpu"])
def test_a_device_that_is_not_cpu_or_cuda_n_is_refused_naming_the_forms(bad: str) -> None:
    """INFERMETER_DEVICE / --device accept cpu and cuda:N only."""
    with pytest.raises(ConfigError, match="use cpu or cuda:N"):
        load_settings({"device": bad}, env={})
