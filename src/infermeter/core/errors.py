"""The one exception tree of infermeter.

    InfermeterError
    ├── InvalidRequest          bad input from a client: 4xx, never a charge
    │   ├── UnknownModel        404
    │   ├── ContextTooLong      400, names the engine limit
    │   └── ShapeOutsideProfiles 400, no engine profile admits the shape
    ├── AuthError               401 (missing/invalid/revoked key)
    ├── PermissionDenied        403 (tenant key on an admin route)
    ├── NotFound                404 (a record, a tenant, a period)
    │   └── NotYet              404 + Retry-After: accepted, not in the ledger yet
    ├── BudgetExceeded          402 (the reservation does not fit)
    ├── Unavailable             503 (recoverable: store or worker not ready)
    ├── EngineError             fatal for a step; the engine or its artifact is broken
    │   └── StaleEngine         the artifact does not match runtime or device
    ├── LedgerIntegrityError    verify found a changed, removed or reordered entry
    └── ConfigError             settings are wrong; the CLI exits 2

HTTP mapping lives in ``infermeter.api.errors``; exit codes live in ``infermeter.cli``.
Every message names the thing, the value, the limit and the fix.
"""

from __future__ import annotations


class InfermeterError(Exception):
    """Root of every error infermeter raises on purpose."""

    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(InfermeterError):
    code = "invalid_request"


class UnknownModel(InvalidRequest):
    code = "model_not_found"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


class ShapeOutsideProfiles(InvalidRequest):
    code = "shape_outside_profiles"


class AuthError(InfermeterError):
    code = "invalid_api_key"


class PermissionDenied(InfermeterError):
    code = "permission_denied"


class NotFound(InfermeterError):
    code = "not_found"


class NotYet(NotFound):
    """The thing exists but is not readable yet (a record still on its way to the ledger)."""

    code = "not_in_ledger_yet"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BudgetExceeded(InfermeterError):
    code = "budget_exceeded"


class Unavailable(InfermeterError):
    code = "unavailable"


class EngineError(InfermeterError):
    code = "engine_error"


class StaleEngine(EngineError):
    code = "stale_engine"


class LedgerIntegrityError(InfermeterError):
    code = "ledger_integrity"

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class ConfigError(InfermeterError):
    code = "config_error"
