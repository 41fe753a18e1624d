"""The verifiable log through a real server: receipts, checkpoints, proofs, keys, corrections."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from infermeter.billing.checkpoints import Checkpoint, signature_problem
from infermeter.billing.merkle import verify_consistency
from infermeter.billing.receipts import verify_receipt
from infermeter.billing.signing import keys_from_document
from tests.conftest import LiveServer


def call(
    live: LiveServer, method: str, path: str, key: str | None = "alpha", **kwargs: Any
) -> httpx.Response:
    secret = live.admin_key if key == "admin" else live.keys[key] if key else None
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    return httpx.request(method, live.url + path, headers=headers, timeout=30, **kwargs)


def spend(live: LiveServer, tenant: str = "alpha", n: int = 1) -> list[str]:
    client = live.client(tenant)
    return [
        client.completions.create(model="tiny-gpt", prompt=f"p{i}", max_tokens=2 + i).usage.model_extra[
            "metering"
        ]["record_id"]
        for i in range(n)
    ]


def public_keys(live: LiveServer) -> dict[str, bytes]:
    return keys_from_document(call(live, "GET", "/v1/ledger/key", key=None).json())


def test_a_saved_receipt_verifies_offline_with_only_the_public_key(
    fake_server: LiveServer, tmp_path: Path
) -> None:
    """Save a receipt and the key document to files; verify from the files alone."""
    (record_id,) = spend(fake_server)
    resp = call(fake_server, "GET", f"/v1/receipts/{record_id}")
    assert resp.status_code == 200
    (tmp_path / "receipt.json").write_bytes(resp.content)
    (tmp_path / "key.json").write_bytes(call(fake_server, "GET", "/v1/ledger/key", key=None).content)
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    keys = keys_from_document(json.loads((tmp_path / "key.json").read_text()))
    verdict = verify_receipt(receipt, keys)
    assert verdict.ok, verdict.message
    data = receipt["entry"]["event"]["data"]
    assert data["record_id"] == record_id and data["tenant_id"] == fake_server.tenant_ids["alpha"]
    assert receipt["checkpoint"]["tree_size"] > receipt["leaf_index"]


def test_a_tampered_receipt_is_rejected(fake_server: LiveServer) -> None:
    """Lowering the cost in a saved receipt makes it fail, saying the record was changed."""
    (record_id,) = spend(fake_server)
    receipt = call(fake_server, "GET", f"/v1/receipts/{record_id}").json()
    forged = copy.deepcopy(receipt)
    forged["entry"]["event"]["data"]["cost"] = "0"
    verdict = verify_receipt(forged, public_keys(fake_server))
    assert not verdict.ok and "record was changed" in verdict.message


def test_receipts_follow_tenant_isolation(fake_server: LiveServer) -> None:
    """Another tenant gets 404 for alpha's receipt, an admin gets it, no key gets 401."""
    (record_id,) = spend(fake_server)
    assert call(fake_server, "GET", f"/v1/receipts/{record_id}", key="beta").status_code == 404
    assert call(fake_server, "GET", f"/v1/receipts/{record_id}", key="admin").status_code == 200
    assert call(fake_server, "GET", f"/v1/receipts/{record_id}", key=None).status_code == 401
    assert call(fake_server, "GET", "/v1/receipts/rec_nope").status_code == 404


def test_consistency_between_two_checkpoints_verifies(fake_server: LiveServer) -> None:
    """Two checkpoints made on demand; the served proof shows the first is a prefix of the second."""
    spend(fake_server, n=2)
    first = call(fake_server, "POST", "/v1/admin/checkpoints", key="admin").json()
    spend(fake_server, n=3)
    second = call(fake_server, "POST", "/v1/admin/checkpoints", key="admin").json()
    assert first["created"] and second["created"] and second["tree_size"] == first["tree_size"] + 3
    resp = call(
        fake_server,
        "GET",
        "/v1/ledger/consistency",
        params={"first": first["tree_size"], "second": second["tree_size"]},
    ).json()
    keys = public_keys(fake_server)
    older, newer = Checkpoint.from_json(resp["first"]), Checkpoint.from_json(resp["second"])
    assert signature_problem(older, keys) is None and signature_problem(newer, keys) is None
    assert verify_consistency(
        older.tree_size,
        newer.tree_size,
        bytes.fromhex(older.root_hash),
        bytes.fromhex(newer.root_hash),
        [bytes.fromhex(p) for p in resp["proof"]],
    )
    listed = call(fake_server, "GET", "/v1/ledger/checkpoints", params={"limit": 1}).json()
    assert listed["has_more"] and len(listed["data"]) == 1
    rest = call(fake_server, "GET", "/v1/ledger/checkpoints", params={"after": listed["next_after"]}).json()
    assert [c["number"] for c in listed["data"] + rest["data"]] == list(range(1, 1 + len(rest["data"]) + 1))
    assert rest["latest"]["tree_size"] == second["tree_size"]


def test_consistency_needs_two_checkpointed_sizes(fake_server: LiveServer) -> None:
    """Unknown sizes are 404 naming the size; first > second is 400."""
    spend(fake_server)
    cp = call(fake_server, "POST", "/v1/admin/checkpoints", key="admin").json()
    size = cp["tree_size"]
    missing = call(
        fake_server, "GET", "/v1/ledger/consistency", params={"first": size + 5, "second": size + 5}
    )
    assert missing.status_code == 404 and str(size + 5) in missing.json()["error"]["message"]
    backwards = call(fake_server, "GET", "/v1/ledger/consistency", params={"first": size, "second": 0})
    assert backwards.status_code == 400


def test_key_rotation_keeps_old_receipts_verifiable(fake_server: LiveServer) -> None:
    """A receipt signed before a rotation verifies with the keys listed after it; new ones use the new key."""
    (before,) = spend(fake_server)
    old_receipt = call(fake_server, "GET", f"/v1/receipts/{before}").json()
    old_key = old_receipt["checkpoint"]["key_id"]
    new_key = fake_server.service.checkpoints.keys.rotate()  # what `infermeter ledger rotate-key` does
    doc = call(fake_server, "GET", "/v1/ledger/key", key=None).json()
    assert doc["active_key_id"] == new_key and {k["key_id"] for k in doc["keys"]} == {old_key, new_key}
    (after,) = spend(fake_server)
    new_receipt = call(fake_server, "GET", f"/v1/receipts/{after}").json()
    assert new_receipt["checkpoint"]["key_id"] == new_key
    keys = keys_from_document(doc)
    assert verify_receipt(old_receipt, keys).ok and verify_receipt(new_receipt, keys).ok


def test_a_credit_changes_the_invoice_while_the_original_stays(fake_server: LiveServer) -> None:
    """An admin credit: a negative credit line on the invoice; the original record is unchanged."""
    ids = spend(fake_server, n=3)
    period = datetime.now(UTC).strftime("%Y-%m")
    original = call(fake_server, "GET", f"/v1/usage/records/{ids[1]}").json()
    before = call(fake_server, "GET", f"/v1/invoices/{period}").json()
    amount = Decimal(original["cost"]) / 2
    resp = call(
        fake_server,
        "POST",
        "/v1/admin/corrections",
        key="admin",
        json={"record_id": ids[1], "kind": "credit", "amount": str(amount), "reason": "slow replies"},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["corrects"] == ids[1]
    assert Decimal(body["remaining"]["cost"]) == Decimal(original["cost"]) - amount
    after = call(fake_server, "GET", f"/v1/invoices/{period}").json()
    assert Decimal(after["exact_total"]) == Decimal(before["exact_total"]) - amount
    credit = [line for line in after["lines"] if line["kind"] == "credit"]
    assert len(credit) == 1 and Decimal(credit[0]["exact_amount"]) == -amount
    assert call(fake_server, "GET", f"/v1/usage/records/{ids[1]}").json() == original
    correction = body["correction"]
    assert (correction["kind"], correction["corrects"]) == ("credit", ids[1])
    assert correction["reason"] == "slow replies"
    assert call(fake_server, "GET", f"/v1/receipts/{correction['record_id']}").status_code == 200


def test_corrections_are_checked_and_admin_only(fake_server: LiveServer) -> None:
    """Over-crediting names the amounts (400); floats are refused; tenants get 403."""
    (record_id,) = spend(fake_server)
    cost = call(fake_server, "GET", f"/v1/usage/records/{record_id}").json()["cost"]
    over = call(
        fake_server,
        "POST",
        "/v1/admin/corrections",
        key="admin",
        json={"record_id": record_id, "kind": "credit", "amount": "1000", "reason": "x"},
    )
    assert over.status_code == 400 and cost in over.json()["error"]["message"]
    floats = call(
        fake_server,
        "POST",
        "/v1/admin/corrections",
        key="admin",
        json={"record_id": record_id, "kind": "credit", "amount": 0.5, "reason": "x"},
    )
    assert floats.status_code == 400 and floats.json()["error"]["param"] == "amount"
    tenant = call(
        fake_server,
        "POST",
        "/v1/admin/corrections",
        json={"record_id": record_id, "kind": "reversal", "reason": "x"},
    )
    assert tenant.status_code == 403
    assert call(fake_server, "POST", "/v1/admin/checkpoints").status_code == 403
    reversed_ = call(
        fake_server,
        "POST",
        "/v1/admin/corrections",
        key="admin",
        json={"record_id": record_id, "kind": "reversal", "reason": "duplicate"},
    )
    assert reversed_.status_code == 200 and reversed_.json()["remaining"]["cost"] == "0"
