"""Typed settings, read once. Precedence: command-line flags > environment > defaults.

Environment variables are ``INFERMETER_<FIELD>`` (e.g. ``INFERMETER_HOME``,
``INFERMETER_PORT``). Each component receives only its own values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from infermeter.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path = Path(".infermeter")
    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "tiny-gpt"
    # engines
    int8: bool = True  # build and serve the INT8 economy engine for service_tier=flex
    model_dir: str | None = None  # also serve this user model (Optimum export directory)
    intra_op_threads: int = 0  # 0 = onnxruntime's default (all cores)
    device: str | None = None  # serve only this device's engines: cpu | cuda:N; None = every engine
    warmup_steps: int = 4
    # scheduler
    max_batch: int = 16
    token_budget: int = 512
    prefill_chunk: int = 256
    # KV-cache budget per engine in MiB (runtime.scheduler); 0 = a CUDA transformers engine's
    # own (90 % of the device memory free after its weights), else none
    kv_cache_mb: int = 0
    # admission (runtime.admission): requests in the worker at once, and waiting for a slot
    max_active: int = 0  # 0 = 2 x max_batch
    max_queued: int = 1024  # past this a request is refused (429, Retry-After)
    # metering and billing
    metering: bool = True
    synchronous: str = "FULL"  # SQLite synchronous mode for the ledger
    db: str | None = None  # billing database URL: postgresql://…; None = the SQLite file in home
    queue: str | None = None  # usage queue URL (nats://…): cluster mode, with a PostgreSQL db
    max_outbox: int = 100_000  # cluster mode: not ready (503) at this many unconfirmed records; 0 = no bound
    default_budget: str | None = None  # per-tenant spend limit for new tenants; None = unlimited
    sampler: str = "none"  # window sampler source: none | scripted | nvml | dcgm
    window_ms: int = 100  # sampler window length (GPM needs >= 100 ms)
    checkpoint_interval_s: int = 60  # sign a ledger checkpoint this often when it grew; 0 = only on demand
    # public log: C2SP witnesses to send checkpoints to, "URL VKEY;URL VKEY" (billing.log_publisher)
    witnesses: str = ""
    log_level: str = "info"
    max_body_bytes: int = 1024 * 1024  # request bodies over this get a 413 before they are read
    budget_status: int = 402  # an exhausted budget's status: 402, or 429 insufficient_quota (OpenAI)
    # lifecycle
    graceful_timeout: int = 30  # SIGTERM: drain at most this many seconds, then cancel (billed) the rest
    allow_unverified: bool = False  # serve even when the ledger fails the start-up check (logged loudly)

    @property
    def db_path(self) -> Path:
        return self.home / "infermeter.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def engines_dir(self) -> Path:
        return self.home / "engines"


def _coerce(name: str, raw: str, default: Any) -> Any:
    kind = type(default)
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, Path):
            return Path(raw)
    except ValueError:
        raise ConfigError(
            f"INFERMETER_{name.upper()}={raw!r} is not a valid {kind.__name__}; "
            f"unset it or give a value like {default!r}"
        ) from None
    return raw


def cuda_index(device: str) -> int | None:
    """N of "cuda:N" ("cuda" is cuda:0); None for anything else."""
    if device == "cuda":
        return 0
    head, _, index = device.partition(":")
    return int(index) if head == "cuda" and index.isdigit() else None


def load_settings(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Defaults, then ``INFERMETER_*`` variables, then explicit overrides (flags) that are not None."""
    env = dict(os.environ) if env is None else env
    base = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(f"INFERMETER_{f.name.upper()}")
        if raw is not None and raw != "":
            values[f.name] = _coerce(f.name, raw, getattr(base, f.name))
    for key, value in (overrides or {}).items():
        if value is not None:
            default = getattr(base, key)
            values[key] = _coerce(key, value, default) if isinstance(value, str) else value
    settings = replace(base, **values)
    if settings.sampler not in ("none", "scripted", "nvml", "dcgm"):
        raise ConfigError(f"sampler={settings.sampler!r}; use none, scripted, nvml or dcgm")
    if settings.window_ms < 1:
        raise ConfigError(f"window_ms={settings.window_ms} must be >= 1 (100 is the default)")
    if settings.checkpoint_interval_s < 0:
        raise ConfigError(
            f"checkpoint_interval_s={settings.checkpoint_interval_s} must be >= 0 "
            "(60 is the default; 0 signs checkpoints only on demand)"
        )
    if settings.db is not None and not settings.db.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"db={settings.db!r} is not a PostgreSQL URL; use postgresql://user@host:5432/name "
            "or leave it unset for the SQLite file in the home directory"
        )
    if settings.queue is not None and not settings.queue.startswith("nats://"):
        raise ConfigError(f"queue={settings.queue!r} is not a NATS URL; use e.g. nats://127.0.0.1:4222")
    if settings.queue is not None and not (settings.db or "").startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"queue={settings.queue!r} needs a PostgreSQL billing database; pass --db postgresql://… "
            "(the ingester appends the queued records there)"
        )
    if settings.budget_status not in (402, 429):
        raise ConfigError(
            f"budget_status={settings.budget_status} must be 402 (the default) or 429 "
            "(OpenAI's insufficient_quota convention)"
        )
    if settings.device is not None and cuda_index(settings.device) is None and settings.device != "cpu":
        raise ConfigError(
            f"device={settings.device!r} is not a device; use cpu or cuda:N (N = 0, 1, … as "
            "nvidia-smi numbers the GPUs), one worker per device"
        )
    if settings.max_outbox < 0:
        raise ConfigError(
            f"max_outbox={settings.max_outbox} must be >= 0 (100000 is the default; 0 = no bound)"
        )
    if settings.max_body_bytes < 1:
        raise ConfigError(
            f"max_body_bytes={settings.max_body_bytes} must be >= 1 (1048576, 1 MiB, is the default)"
        )
    if settings.graceful_timeout < 0:
        raise ConfigError(
            f"graceful_timeout={settings.graceful_timeout} must be >= 0 seconds "
            "(30 is the default; 0 cancels in-flight requests at once on SIGTERM)"
        )
    if settings.max_active < 0 or settings.max_queued < 0:
        raise ConfigError(
            f"max_active={settings.max_active}, max_queued={settings.max_queued} must be >= 0 "
            "(max_active 0 means 2 x max_batch)"
        )
    if settings.synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError(f"synchronous={settings.synchronous!r}; use NORMAL, FULL or EXTRA")
    return settings
