"""Billing exports through the admin API and the CLI: incremental, so a re-run bills nothing twice."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.api.test_usage import spend
from tests.conftest import LiveServer, fake_service, run_server


def export(live: LiveServer, fmt: str, key: str | None = None, **params: str | int) -> httpx.Response:
    headers = {"authorization": f"Bearer {key or live.admin_key}"}
    return httpx.get(f"{live.url}/v1/admin/exports/{fmt}", params=params, headers=headers, timeout=30)


def test_exports_resume_from_the_cursor_and_repeat_nothing(fake_server: LiveServer) -> None:
    """Each format exports every billed request once; from next_after, nothing again."""
    ids = spend(fake_server, "alpha", 2) + spend(fake_server, "beta", 1, tier="flex")
    fake_server.service.store.flush()
    for fmt, key in (("stripe", "identifier"), ("lago", "transaction_id")):
        page = export(fake_server, fmt).json()
        assert [e[key] for b in page["bodies"] for e in b["events"]] == ids and page["has_more"] is False
        again = export(fake_server, fmt, after=page["next_after"]).json()
        assert (again["count"], again["bodies"], again["next_after"]) == (0, [], page["next_after"])
    events = export(fake_server, "openmeter").json()["bodies"]
    assert [e["id"] for e in events] == ids
    focus = export(fake_server, "focus")
    rows = list(csv.DictReader(io.StringIO(focus.text)))
    assert [r["x_RecordId"] for r in rows] == ids
    assert [r["PricingCategory"] for r in rows] == ["Standard", "Standard", "Dynamic"]
    empty = export(fake_server, "focus", after=focus.headers["x-infermeter-next-after"])
    assert empty.text.count("\n") == 1  # the header row alone


def test_a_paged_export_has_more_until_the_end(fake_server: LiveServer) -> None:
    """limit=1 pages through the ledger one entry at a time, then says has_more=false."""
    ids = spend(fake_server, "alpha", 2)
    fake_server.service.store.flush()
    seen, after, more = [], None, True
    while more:
        page = export(fake_server, "stripe", limit=1, **({} if after is None else {"after": after})).json()
        seen += [e["identifier"] for b in page["bodies"] for e in b["events"]]
        after, more = page["next_after"], page["has_more"]
    assert seen == ids


def test_exports_need_an_admin_key_and_a_known_format(fake_server: LiveServer) -> None:
    """A tenant key gets 403; an unknown format or a bad limit a 400 naming it."""
    assert export(fake_server, "stripe", key=fake_server.keys["alpha"]).status_code == 403
    bad = export(fake_server, "paypal")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"
    assert export(fake_server, "lago", limit=0).json()["error"]["param"] == "limit"


def test_the_cli_export_with_a_cursor_file_exports_nothing_twice(tmp_path: Path) -> None:
    """`infermeter export lago --cursor F` run twice: the second run prints no event."""
    home = tmp_path / "home"
    gen = run_server(fake_service(home))
    live = next(gen)
    try:
        ids = spend(live, "alpha", 3)
    finally:
        for _ in gen:
            pass
    cursor = tmp_path / "lago.cursor"

    def run() -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "infermeter.cli.main",
            "--home",
            str(home),
            "export",
            "lago",
            "--cursor",
            str(cursor),
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)

    first = run()
    bodies = [json.loads(line) for line in first.stdout.splitlines()]
    assert [e["transaction_id"] for b in bodies for e in b["events"]] == ids
    assert cursor.read_text().strip().isdigit()
    second = run()
    assert second.stdout == "" and "exported 0 lago records" in second.stderr
