"""kv_cache_mb: the KV budget a service gives each engine's scheduler, in cached tokens."""

from __future__ import annotations

from dataclasses import replace

import pytest

from infermeter.app.service import kv_budget_tokens
from infermeter.config import load_settings
from infermeter.core.errors import ConfigError
from infermeter.runtime.fake_engine import fake_engine_info

INFO = fake_engine_info(max_seq_len=1024)  # 4 layers x 4 heads x 32 x 2 x 4 bytes = 4 KiB/token


def test_no_setting_and_no_engine_budget_means_no_limit() -> None:
    """The default (0) on an engine that states no budget: None, as before budgets existed."""
    assert kv_budget_tokens(load_settings({}, env={}), INFO) is None


def test_kv_cache_mb_becomes_tokens_of_the_engine() -> None:
    """INFERMETER_KV_CACHE_MB=8 holds 8 MiB / 4 KiB = 2,048 tokens of this engine."""
    settings = load_settings({}, env={"INFERMETER_KV_CACHE_MB": "8"})
    assert INFO.kv_bytes_per_token == 4096
    assert kv_budget_tokens(settings, INFO) == 2048


def test_an_engine_stated_budget_applies_when_none_is_set() -> None:
    """A CUDA transformers engine states kv_budget_bytes; the setting overrides it."""
    info = replace(INFO, extra={"kv_budget_bytes": 16 * 2**20})
    assert kv_budget_tokens(load_settings({}, env={}), info) == 4096
    assert kv_budget_tokens(load_settings({"kv_cache_mb": 8}, env={}), info) == 2048


def test_a_budget_below_one_context_names_the_minimum() -> None:
    """2 MiB holds 512 tokens, less than the 1,024 context: refused, naming 4 MiB."""
    with pytest.raises(ConfigError, match=r"holds 512 KV tokens .* INFERMETER_KV_CACHE_MB=4 or more"):
        kv_budget_tokens(load_settings({"kv_cache_mb": 2}, env={}), INFO)
