"""Exports validate against each billing system's own published types, offline.

Stripe: the ``stripe`` SDK's ``MeterEventStreamCreateParams`` TypedDict (the v2 meter event
stream body); Lago: ``lago-python-client``'s ``BatchEvent``/``Event`` models; OpenMeter: the
CloudEvents 1.0 spec as the ``cloudevents`` SDK enforces it; FOCUS: a JSON schema of the
columns we emit, written from the FOCUS column definitions (docs/pricing.md names them).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import typing
from decimal import Decimal
from typing import Any

import jsonschema_rs
import pytest
import typeguard

from infermeter.billing.exports import BATCH, FOCUS_COLUMNS, export_page
from infermeter.billing.plans import PlanBook
from infermeter.billing.pricing import DEFAULT_PLAN
from infermeter.core.types import ServiceTier
from tests.billing.ledger_records import make_record

ALL = typeguard.CollectionCheckStrategy.ALL_ITEMS


def rows(n: int, **overrides: Any) -> list[tuple[int, Any]]:
    return [(i, make_record(i, **overrides)) for i in range(n)]


def check_typed_dict(value: Any, td: Any) -> None:
    """Strictly check ``value`` against a TypedDict: no unknown keys, every required key, types."""
    assert isinstance(value, dict)
    hints = typing.get_type_hints(td, globalns=vars(sys.modules[td.__module__]))
    unknown = set(value) - set(hints)
    assert not unknown, f"{td.__name__} has no keys {unknown}"
    missing = set(td.__required_keys__) - set(value)
    assert not missing, f"{td.__name__} requires {missing}"
    for key, item in value.items():
        hint = hints[key]
        if typing.get_origin(hint) is list and typing.is_typeddict(typing.get_args(hint)[0]):
            assert isinstance(item, list)
            for element in item:
                check_typed_dict(element, typing.get_args(hint)[0])
        else:
            typeguard.check_type(item, hint, collection_check_strategy=ALL)


def test_stripe_bodies_are_meter_event_stream_params() -> None:
    """Each body is a v2 meter_event_stream body: <= 100 events, identifier = record id."""
    from stripe.params.v2.billing import MeterEventStreamCreateParams

    page = export_page("stripe", rows(250), None, customers={"ten_a": "cus_123"})
    assert [len(b["events"]) for b in page.bodies] == [BATCH, BATCH, 50]
    for body in page.bodies:
        check_typed_dict(body, MeterEventStreamCreateParams)
    first = page.bodies[0]["events"][0]
    assert first["identifier"] == "rec_t000000" and first["payload"]["stripe_customer_id"] == "cus_123"
    assert Decimal(first["payload"]["value"]) == make_record(0).ru
    assert len(first["payload"]["value"].replace(".", "").lstrip("0")) <= 15  # Stripe's digit limit


def test_a_bad_stripe_body_fails_the_checker() -> None:
    """The checker is not vacuous: a float value or an unknown key is refused."""
    from stripe.params.v2.billing import MeterEventStreamCreateParams

    body = export_page("stripe", rows(1), None).bodies[0]
    body["events"][0]["payload"]["value"] = 1.5
    with pytest.raises(typeguard.TypeCheckError):
        check_typed_dict(body, MeterEventStreamCreateParams)
    with pytest.raises((AssertionError, typeguard.TypeCheckError)):
        check_typed_dict(
            {"events": [{"event_name": "x", "payload": {}, "value": "1"}]}, MeterEventStreamCreateParams
        )


def test_lago_bodies_are_lago_batch_events() -> None:
    """Each body parses as Lago's BatchEvent with no field it ignores; transaction_id = record id."""
    from lago_python_client.models.event import BatchEvent, Event

    page = export_page("lago", rows(120), None)
    assert [len(b["events"]) for b in page.bodies] == [BATCH, 20]
    for body in page.bodies:
        parsed = BatchEvent.parse_obj(body)
        assert len(parsed.events) == len(body["events"])
        for event in body["events"]:
            assert set(event) <= set(Event.__fields__)
    event = page.bodies[0]["events"][3]
    record = make_record(3)
    assert event["transaction_id"] == record.record_id
    assert Decimal(event["precise_total_amount_cents"]) == record.cost * 100
    assert event["timestamp"] == int(record.ended_at.timestamp())


def test_openmeter_bodies_are_cloudevents() -> None:
    """Each body reads as a CloudEvents 1.0 event (the SDK's validation) with id = record id."""
    from cloudevents.core.formats.json import JSONFormat

    page = export_page("openmeter", rows(3), None)
    for (_, record), body in zip(rows(3), page.bodies, strict=True):
        event = JSONFormat().read(None, json.dumps(body).encode())
        assert event.get_id() == record.record_id and event.get_subject() == record.tenant_id
        data = event.get_data()
        assert isinstance(data, dict) and data["ru"] == body["data"]["ru"]


FOCUS_SCHEMA = {
    "type": "object",
    "required": list(FOCUS_COLUMNS),
    "additionalProperties": False,
    "properties": {
        **{c: {"type": "string"} for c in FOCUS_COLUMNS},
        **{
            c: {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}
            for c in ("BilledCost", "EffectiveCost", "ContractedCost", "PricingQuantity", "ConsumedQuantity")
        },
        **{
            c: {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?)?$"}
            for c in ("ListCost", "ListUnitPrice", "ContractedUnitPrice")
        },
        **{
            c: {
                "type": "string",
                "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$",
            }
            for c in ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")
        },
        "ChargeCategory": {"enum": ["Usage", "Purchase", "Tax", "Credit", "Adjustment"]},
        "ChargeClass": {"enum": ["", "Correction"]},
        "ChargeFrequency": {"enum": ["One-Time", "Recurring", "Usage-Based"]},
        "PricingCategory": {"enum": ["Standard", "Dynamic", "Committed", "Other"]},
        "BillingCurrency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "x_LedgerSeq": {"type": "string", "pattern": "^[0-9]+$"},
    },
}


def test_focus_rows_match_the_focus_columns() -> None:
    """Every row validates; flex is Dynamic, a credit is a Correction; costs equal the records'."""
    records = [
        *rows(3, price_plan_version=DEFAULT_PLAN.version),
        (
            3,
            make_record(
                3, service_tier=ServiceTier.FLEX, price_point="p.v1:flex:x0.75", multiplier=Decimal("0.75")
            ),
        ),
        (4, make_record(4, kind="credit", cost=Decimal("-0.5"), corrects="rec_t000000", reason="outage")),
        (5, make_record(5, warmup=True)),
    ]
    book = PlanBook(DEFAULT_PLAN)
    page = export_page("focus", records, None, list_price=book.list_price)
    assert page.csv is not None
    parsed = list(csv.DictReader(io.StringIO(page.csv)))
    validator = jsonschema_rs.validator_for(FOCUS_SCHEMA)
    for row in parsed:
        validator.validate(row)
    assert len(parsed) == 5 and page.next_after == 5  # warm-up left out, the cursor past it
    assert [r["PricingCategory"] for r in parsed[2:4]] == ["Standard", "Dynamic"]
    assert (parsed[4]["ChargeCategory"], parsed[4]["ChargeClass"]) == ("Credit", "Correction")
    assert [Decimal(r["BilledCost"]) for r in parsed] == [r.cost for _, r in records[:5]]
    assert parsed[0]["ListUnitPrice"] == "0.000002"  # the default plan's 0.0020 per 1,000 RU


def test_the_cursor_moves_past_every_entry_so_nothing_is_exported_twice() -> None:
    """Pages read from next_after never overlap; corrections and warm-up move it without events."""
    all_rows = [*rows(5), (5, make_record(5, kind="reversal", corrects="rec_t000001", cost=Decimal(-1)))]
    first = export_page("stripe", all_rows[:3], None)
    rest = export_page("stripe", all_rows[3:], first.next_after)
    ids = [e["identifier"] for p in (first, rest) for b in p.bodies for e in b["events"]]
    assert ids == [f"rec_t{i:06d}" for i in range(5)] and rest.next_after == 5
    assert export_page("stripe", [], rest.next_after).bodies == []
