"""The service: one process holding the store, the engines, one worker and the pipeline.

``Service.from_settings`` builds the embedded default (SQLite, ONNX Runtime on CPU, the
built-in model). Tests inject engines (e.g. ``FakeEngine``) through ``Service(...)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from infermeter.billing.budgets import BudgetBook
from infermeter.billing.checkpoint_log import CheckpointLog, CheckpointScheduler, Transact
from infermeter.billing.log_publisher import LogPublisher, parse_witnesses
from infermeter.billing.pricing import DEFAULT_PLAN, PricePlan
from infermeter.billing.public_log import PublicLog
from infermeter.billing.signing import LedgerKeys
from infermeter.billing.sqlite_store import SqliteStore
from infermeter.billing.store import Store
from infermeter.config import Settings
from infermeter.core.errors import ConfigError, Unavailable
from infermeter.core.timing import NullTimer
from infermeter.metering.attribution import CostModel
from infermeter.metering.calibrations import load_active
from infermeter.metering.ru import SEED_TABLE, RuTable
from infermeter.metering.sampler import WindowSampler
from infermeter.metering.sources import make_source
from infermeter.metering.timers import CpuStepTimer
from infermeter.metering.window_ledger import WindowLedger, WindowMeters
from infermeter.observability.metrics import Metrics
from infermeter.runtime.admission import Admission, AdmissionLimits
from infermeter.runtime.engine import EngineInfo, LoadedEngine, Tokenizer
from infermeter.runtime.router import Router
from infermeter.runtime.scheduler import SchedulerConfig
from infermeter.runtime.worker import Worker

from .health import LedgerWatch, fault_message
from .limits import RateLimits
from .pipeline import MeteringPipeline
from .prices import Prices
from .stores import make_budgets, make_checkpoint_log, make_store, uses_postgres

log = logging.getLogger(__name__)


def kv_budget_tokens(settings: Settings, info: EngineInfo) -> int | None:
    """The engine's KV budget in cached tokens: ``kv_cache_mb``, else the engine's own
    ``kv_budget_bytes`` (a CUDA transformers engine), else None (no limit). ConfigError when
    it cannot hold one sequence of the engine's context."""
    budget = settings.kv_cache_mb * 2**20 if settings.kv_cache_mb > 0 else info.extra.get("kv_budget_bytes")
    if not budget or info.kv_bytes_per_token <= 0:
        return None
    tokens = int(budget) // info.kv_bytes_per_token
    if tokens < info.max_seq_len:
        need = -(-info.max_seq_len * info.kv_bytes_per_token // 2**20)
        raise ConfigError(
            f"kv_cache_mb: {int(budget) / 2**20:.1f} MiB holds {tokens} KV tokens of engine "
            f"{info.engine_id}, less than one sequence of its context ({info.max_seq_len}); "
            f"give INFERMETER_KV_CACHE_MB={need} or more"
        )
    return tokens


class Service:
    def __init__(
        self,
        settings: Settings,
        engines: Sequence[LoadedEngine],
        *,
        store: Store | None = None,
        plan: PricePlan = DEFAULT_PLAN,
        ru_table: RuTable = SEED_TABLE,
    ) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.store: Store = store or make_store(settings)
        self.metrics = Metrics()
        # The verifiable log: the signing key is made here on first start (billing.signing).
        self.checkpoints: CheckpointLog = make_checkpoint_log(
            settings, LedgerKeys(settings.home / "keys"), self.store
        )
        self._checkpointer: CheckpointScheduler | None = None
        # The public C2SP log over the same entries: signed at most once a second while it grows.
        # (embedded SQLite store only, for now: the PostgreSQL store has no public log yet)
        self.public_log: PublicLog | None = None
        self.log_publisher: LogPublisher | None = None
        if not uses_postgres(settings):
            self.public_log = PublicLog(getattr(self.store, "path", settings.db_path), self.checkpoints.keys)
            self.log_publisher = LogPublisher(self.public_log, parse_witnesses(settings.witnesses))
        limit_default = Decimal(settings.default_budget) if settings.default_budget else None
        self._limit_default = limit_default
        # one process's own budgets on SQLite; shared by every worker on PostgreSQL
        self.budgets: BudgetBook = make_budgets(settings, self.store, self._limit_of, limit_default)
        self.plan = plan
        self.prices = Prices(self.store, plan)  # per-tenant plan versions (billing.plans)
        self.rate_limits = RateLimits(self.store)  # per tenant and key (billing.rate_limits)
        # The active calibration (one that passed the MAPE gate or was activated by name),
        # unless the caller chose a table itself; candidates never price anything.
        calibration = load_active(settings.home)
        if calibration is not None and ru_table is SEED_TABLE:
            ru_table = calibration.ru_table
        self.ru_table = ru_table
        self.pipeline = MeteringPipeline(
            self.store, self.budgets, plan, ru_table, self.metrics, enabled=settings.metering
        )
        # Cost models: the one an engine's build recorded, then the newest calibration's.
        for loaded in engines:
            recorded = loaded.engine.info.extra.get("cost_model")
            if recorded:
                self.pipeline.set_cost_model(loaded.engine.info.engine_id, CostModel.from_json(recorded))
        if calibration is not None:
            for engine_id, model in calibration.cost_models.items():
                self.pipeline.set_cost_model(engine_id, model)
        self.sampler, self.window_ledger = self._window_metering(settings)
        self.worker = Worker(self.pipeline)
        self.tokenizers: dict[str, Tokenizer] = {}
        for loaded in engines:
            info = loaded.engine.info
            self.worker.add_engine(
                loaded.engine,
                loaded.tokenizer,
                SchedulerConfig(
                    max_batch=min(settings.max_batch, info.max_batch),
                    token_budget=settings.token_budget,
                    prefill_chunk=settings.prefill_chunk,
                    max_seq_len=info.max_seq_len,
                    kv_budget_tokens=kv_budget_tokens(settings, info),
                ),
            )
            self.tokenizers[info.engine_id] = loaded.tokenizer
        self.router = Router(e.engine.info for e in engines)
        active = settings.max_active or 2 * settings.max_batch
        self.admission = Admission(AdmissionLimits(max_active=active, max_queued=settings.max_queued))
        self._engines = list(engines)
        self.started = False
        self.state = "starting"  # starting → serving → draining → stopped
        self._watch = LedgerWatch(self.store, self._on_ledger_fault)

    def _window_metering(self, settings: Settings) -> tuple[WindowSampler | None, WindowLedger | None]:
        """The window sampler and its ledger, when ``settings.sampler`` names a source."""
        source = make_source(settings.sampler) if settings.metering else None
        if source is None:
            return None, None
        ledger = WindowLedger(settings.db_path, write=self._file_writer(settings.db_path))
        gpm = settings.sampler in ("nvml", "dcgm")  # GPM windows under 100 ms read false zeros
        sampler = WindowSampler(
            source,
            ledger.write,
            window_ms=settings.window_ms,
            min_activity_ms=100 if gpm else min(100, settings.window_ms),
        )
        self.pipeline.step_sink = sampler.record_step
        return sampler, ledger

    def _file_writer(self, path: Path) -> Transact | None:
        """The store's writer, when the store is the SQLite file at ``path``: its one writer."""
        store = self.store
        if isinstance(store, SqliteStore) and Path(path).resolve() == store.path.resolve():
            return store.write
        return None

    def window_meters(self, request_id: str) -> WindowMeters | None:
        """A request's window-derived meters joined so far (None: no sampler, or no window)."""
        return None if self.window_ledger is None else self.window_ledger.meters(request_id)

    def _limit_of(self, tenant_id: str) -> Decimal | None:
        tenant = self.store.get_tenant(tenant_id)
        if tenant is None:
            return self._limit_default
        return tenant.budget

    @classmethod
    def from_settings(cls, settings: Settings) -> Service:
        from infermeter.app.engines import load_default_engines

        timer_factory = CpuStepTimer if settings.metering else NullTimer
        return cls(settings, load_default_engines(settings, timer_factory))

    def engine_infos(self) -> list[EngineInfo]:
        return [e.engine.info for e in self._engines]

    def start(self) -> None:
        """Warm every engine (platform overhead, never billed), then start the worker."""
        if self.started:
            return
        for loaded in self._engines:
            info = loaded.engine.info
            if self.settings.warmup_steps > 0:
                prompt = loaded.tokenizer.encode("Warm-up: the quick brown fox jumps over the lazy dog.")
                steps = self.worker.warmup(info.engine_id, prompt, self.settings.warmup_steps)
                if self.settings.metering:
                    self.store.append([self.pipeline.warmup_record(info, steps)])
        self.budgets.start()
        self.pipeline.start()
        self.worker.start()
        if self.sampler is not None:
            self.sampler.start()
        if self.settings.checkpoint_interval_s > 0:
            self._checkpointer = CheckpointScheduler(self.checkpoints, self.settings.checkpoint_interval_s)
            self._checkpointer.start()
        if self.log_publisher is not None:
            self.log_publisher.start()  # its first tick signs entries no checkpoint covers yet
        self._watch.start()
        self.started = True
        self.state = "serving"
        log.info("serving %s", ", ".join(e.engine_id for e in self.engine_infos()))

    # health, readiness, admission ---------------------------------------------------
    def health(self) -> str | None:
        """None while the ledger can append; else the cause, for clients and probes."""
        cause = self.store.health()
        return None if cause is None else fault_message(cause, self.settings.db_path)

    def readiness(self) -> str | None:
        """None when a new request would be admitted; else why not (starting, draining, ledger)."""
        if self.state == "starting":
            return "the service is starting (warming its engines); retry in a few seconds"
        if self.state in ("draining", "stopped"):
            return f"the service is {self.state} for shutdown; send requests to another instance"
        return self.health() or self.queue_problem()

    def queue_problem(self) -> str | None:
        """Cluster mode: why the usage queue cannot take more (the outbox at its bound)."""
        check = getattr(self.store, "queue_problem", None)
        return None if check is None else check(self.settings.max_outbox)

    def check_admission(self) -> None:
        """Raise Unavailable (503) before any work when a request must not be admitted."""
        problem = self.readiness() if self.started else self.health()
        if problem is not None:
            raise Unavailable(problem, code="ledger_unavailable" if self.health() else "unavailable")

    def _on_ledger_fault(self, cause: str) -> None:
        cut = self.worker.cancel_all()
        if cut:
            log.error("cut %d request(s) in flight: %s", cut, fault_message(cause, self.settings.db_path))

    def begin_drain(self) -> None:
        """SIGTERM: admit nothing new; requests in flight run on until the graceful timeout."""
        if self.state == "serving":
            self.state = "draining"
            log.info("draining: %d request(s) in flight", self.worker.in_flight())

    def stop(self) -> None:
        self.state = "stopped"
        self._watch.stop()
        # What the graceful drain left is cancelled, priced for the work done and committed
        # below (pipeline close, then store flush) before the process exits.
        left = self.worker.cancel_all()
        if left:
            log.warning("shutdown: cancelled %d request(s) still in flight; billed as cancelled", left)
        self.worker.stop()
        self.pipeline.close()  # every finished request is priced and submitted
        if self.sampler is not None:
            self.sampler.stop(flush=True)
        if self.window_ledger is not None:
            self.window_ledger.close()
        self.store.flush(timeout=10)
        self.budgets.close()  # after the flush: every finished request has settled
        if self._checkpointer is not None:
            self._checkpointer.stop(final=True)  # sign what this run appended
            self._checkpointer = None
        if self.started and self.log_publisher is not None:
            self.log_publisher.stop(final=True)
        if self.public_log is not None:
            self.public_log.close()
        self.checkpoints.close()
        for loaded in self._engines:
            loaded.engine.close()
        self.store.close()
        self.started = False

    @property
    def home(self) -> Path:
        return self.settings.home
