"""Bearer API keys → tenants. Keys are stored hashed; revoked keys are refused."""

from __future__ import annotations

from fastapi import Request

from infermeter.billing.store import ApiKey, Store
from infermeter.core.errors import AuthError, PermissionDenied


def authenticate(store: Store, request: Request) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if not header:
        raise AuthError(
            "missing API key: send 'Authorization: Bearer <key>' "
            "(create one with `infermeter tenants create NAME`)"
        )
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthError("malformed Authorization header: expected 'Bearer <key>'")
    key = store.lookup_key(secret.strip())
    if key is None:
        raise AuthError(
            "invalid API key; check the key or create one with `infermeter keys create --tenant NAME`"
        )
    if key.revoked_at is not None:
        raise AuthError(
            f"API key {key.key_id} was revoked; create a new one with `infermeter keys create`",
            code="revoked_api_key",
        )
    return key


def require_admin(key: ApiKey) -> None:
    if not key.admin:
        raise PermissionDenied(
            f"key {key.key_id} is a tenant key; this endpoint needs an admin key "
            "(`infermeter keys create --admin`)"
        )


def tenant_of(key: ApiKey) -> str:
    """The tenant a key acts for. Admin keys have no tenant of their own."""
    if key.tenant_id is None:
        raise PermissionDenied(
            f"key {key.key_id} is an admin key with no tenant; use a tenant key "
            "or the operator endpoints under /v1/admin"
        )
    return key.tenant_id
