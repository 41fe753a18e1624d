"""The PostgreSQL schema of shared budgets: accounts, reservations, worker leases, functions.

``budget_accounts`` holds each tenant's ``spent`` (Σ cost of its ledger entries, moved in the
same transaction as every append) and ``reserved`` (Σ of its rows in
``budget_reservations``). A reservation belongs to one request and names the worker that
holds it; ``budget_workers`` keeps each worker's lease, renewed by its heartbeat. A
reservation is *settled* (its amount replaced by the measured cost) when the request's
record is durable in the worker's outbox, and deleted by the append that puts the record
into the ledger, which moves the same amount from ``reserved`` to ``spent``.

Every change to a tenant's account runs in one server-side function call (one statement,
one round trip) that first locks the tenant's account row (``SELECT … FOR UPDATE``), so
the check ``spent + reserved + amount <= limit`` and the update are one atomic step across
all processes. Lock order is always account rows (by tenant id) before reservation rows,
in the functions and in the append, so they cannot deadlock.
"""

from __future__ import annotations

_RESERVE = """
CREATE FUNCTION im_budget_reserve(p_tenant TEXT, p_request TEXT, p_amount NUMERIC, p_minimum NUMERIC,
                                  p_default NUMERIC, p_worker TEXT)
RETURNS TABLE (o_granted NUMERIC, o_limit NUMERIC, o_spent NUMERIC, o_reserved NUMERIC)
LANGUAGE plpgsql AS $$
DECLARE
    v_limit NUMERIC;
    v_spent NUMERIC;
    v_reserved NUMERIC;
    v_grant NUMERIC;
BEGIN
    SELECT t.budget::numeric INTO v_limit FROM tenants t WHERE t.tenant_id = p_tenant;
    IF NOT FOUND THEN
        v_limit := p_default;
    END IF;
    IF v_limit IS NULL THEN  -- unlimited: nothing to hold
        RETURN QUERY SELECT p_amount, NULL::numeric, NULL::numeric, NULL::numeric;
        RETURN;
    END IF;
    INSERT INTO budget_accounts (tenant_id) VALUES (p_tenant) ON CONFLICT (tenant_id) DO NOTHING;
    SELECT b.spent, b.reserved INTO v_spent, v_reserved
        FROM budget_accounts b WHERE b.tenant_id = p_tenant FOR UPDATE;
    IF v_limit - v_spent - v_reserved < LEAST(p_minimum, p_amount) THEN  -- not even the minimum fits
        RETURN QUERY SELECT NULL::numeric, v_limit, v_spent, v_reserved;
        RETURN;
    END IF;
    v_grant := LEAST(p_amount, v_limit - v_spent - v_reserved);
    INSERT INTO budget_reservations (request_id, tenant_id, worker, amount)
        VALUES (p_request, p_tenant, p_worker, v_grant);
    UPDATE budget_accounts b SET reserved = b.reserved + v_grant WHERE b.tenant_id = p_tenant;
    RETURN QUERY SELECT v_grant, v_limit, v_spent, v_reserved + v_grant;
END $$"""

_EXTEND = """
CREATE FUNCTION im_budget_extend(p_request TEXT, p_want NUMERIC, p_minimum NUMERIC, p_default NUMERIC)
RETURNS NUMERIC LANGUAGE plpgsql AS $$
DECLARE
    v_tenant TEXT;
    v_limit NUMERIC;
    v_spent NUMERIC;
    v_reserved NUMERIC;
    v_grow NUMERIC := p_want;
BEGIN
    SELECT r.tenant_id INTO v_tenant FROM budget_reservations r
        WHERE r.request_id = p_request AND NOT r.settled;
    IF NOT FOUND OR p_want <= 0 THEN
        RETURN 0;
    END IF;
    SELECT t.budget::numeric INTO v_limit FROM tenants t WHERE t.tenant_id = v_tenant;
    IF NOT FOUND THEN
        v_limit := p_default;
    END IF;
    SELECT b.spent, b.reserved INTO v_spent, v_reserved
        FROM budget_accounts b WHERE b.tenant_id = v_tenant FOR UPDATE;
    IF v_limit IS NOT NULL THEN
        v_grow := LEAST(p_want, v_limit - v_spent - v_reserved);
        IF v_grow < LEAST(p_minimum, p_want) OR v_grow <= 0 THEN
            RETURN 0;
        END IF;
    END IF;
    UPDATE budget_reservations r SET amount = r.amount + v_grow
        WHERE r.request_id = p_request AND NOT r.settled;
    IF NOT FOUND THEN  -- released by the sweeper, or settled, since the first read
        RETURN 0;
    END IF;
    UPDATE budget_accounts b SET reserved = b.reserved + v_grow WHERE b.tenant_id = v_tenant;
    RETURN v_grow;
END $$"""

_SETTLE = """
CREATE FUNCTION im_budget_settle(p_request TEXT, p_actual NUMERIC)
RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    v_tenant TEXT;
    v_held NUMERIC;
BEGIN
    SELECT r.tenant_id INTO v_tenant FROM budget_reservations r
        WHERE r.request_id = p_request AND NOT r.settled;
    IF NOT FOUND THEN  -- never held, released, settled, or already in the ledger
        RETURN FALSE;
    END IF;
    PERFORM 1 FROM budget_accounts b WHERE b.tenant_id = v_tenant FOR UPDATE;
    SELECT r.amount INTO v_held FROM budget_reservations r
        WHERE r.request_id = p_request AND NOT r.settled FOR UPDATE;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    UPDATE budget_reservations r SET amount = p_actual, settled = TRUE, settled_at = now()
        WHERE r.request_id = p_request;
    UPDATE budget_accounts b SET reserved = b.reserved - v_held + p_actual WHERE b.tenant_id = v_tenant;
    RETURN TRUE;
END $$"""

_RELEASE = """
CREATE FUNCTION im_budget_release(p_request TEXT)
RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    v_tenant TEXT;
    v_held NUMERIC;
BEGIN
    SELECT r.tenant_id INTO v_tenant FROM budget_reservations r
        WHERE r.request_id = p_request AND NOT r.settled;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    PERFORM 1 FROM budget_accounts b WHERE b.tenant_id = v_tenant FOR UPDATE;
    DELETE FROM budget_reservations r WHERE r.request_id = p_request AND NOT r.settled
        RETURNING r.amount INTO v_held;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    UPDATE budget_accounts b SET reserved = b.reserved - v_held WHERE b.tenant_id = v_tenant;
    RETURN TRUE;
END $$"""

# Releases what no live worker holds: unsettled reservations of a worker whose lease ran out
# (it crashed, or lost the database for longer than its lease), and settled ones whose
# record has not reached the ledger within p_settled_hold (its outbox is gone for good).
_SWEEP = """
CREATE FUNCTION im_budget_sweep(p_settled_hold INTERVAL)
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    r RECORD;
    v_held NUMERIC;
    n INTEGER := 0;
BEGIN
    FOR r IN SELECT res.request_id, res.tenant_id FROM budget_reservations res
             LEFT JOIN budget_workers w ON w.worker = res.worker
             WHERE (NOT res.settled AND (w.worker IS NULL OR w.lease_until < now()))
                OR (res.settled AND res.settled_at < now() - p_settled_hold)
             ORDER BY res.tenant_id, res.request_id
    LOOP
        PERFORM 1 FROM budget_accounts b WHERE b.tenant_id = r.tenant_id FOR UPDATE;
        DELETE FROM budget_reservations x WHERE x.request_id = r.request_id RETURNING x.amount INTO v_held;
        IF FOUND THEN
            UPDATE budget_accounts b SET reserved = b.reserved - v_held WHERE b.tenant_id = r.tenant_id;
            n := n + 1;
        END IF;
    END LOOP;
    DELETE FROM budget_workers w WHERE w.lease_until < now() - p_settled_hold
        AND NOT EXISTS (SELECT 1 FROM budget_reservations x WHERE x.worker = w.worker);
    RETURN n;
END $$"""

BUDGET_STATEMENTS: tuple[str, ...] = (
    """CREATE TABLE budget_accounts (
        tenant_id TEXT PRIMARY KEY,
        spent NUMERIC NOT NULL DEFAULT 0,
        reserved NUMERIC NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE budget_workers (
        worker TEXT PRIMARY KEY,
        lease_until TIMESTAMPTZ NOT NULL
    )""",
    """CREATE TABLE budget_reservations (
        request_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        worker TEXT NOT NULL,
        amount NUMERIC NOT NULL,
        settled BOOLEAN NOT NULL DEFAULT FALSE,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        settled_at TIMESTAMPTZ
    )""",
    "CREATE INDEX budget_reservations_worker ON budget_reservations (worker)",
    # spent starts as what the ledger holds; appends wait on the head row meanwhile
    "SELECT size FROM ledger_head WHERE id = 0 FOR UPDATE",
    "INSERT INTO budget_accounts (tenant_id, spent) SELECT tenant_id, SUM(cost::numeric) FROM ledger "
    "GROUP BY tenant_id",
    _RESERVE,
    _EXTEND,
    _SETTLE,
    _RELEASE,
    _SWEEP,
)

__all__ = ["BUDGET_STATEMENTS"]
