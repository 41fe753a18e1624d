"""Enumerations used across layers."""

from __future__ import annotations

from enum import StrEnum


class ServiceTier(StrEnum):
    """OpenAI's ``service_tier``: ``default`` runs the performance engine, ``flex`` the INT8 one,
    ``priority`` the performance engine ahead of ``default`` work."""

    DEFAULT = "default"
    FLEX = "flex"
    PRIORITY = "priority"


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


class Phase(StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"


class Status(StrEnum):
    """How a request ended. Every status is billed for the work done; errors before any step cost nothing."""

    COMPLETED = "completed"
    LENGTH = "length"  # stopped at max_tokens or the engine's context
    CANCELLED = "cancelled"  # the client went away; billed for work done
    FAILED = "failed"


class DeviceKind(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
