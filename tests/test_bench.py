"""`infermeter bench --quick` runs end to end and reports the figures it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infermeter.cli.bench import PHASES
from infermeter.cli.main import main


def test_bench_quick_reports_all_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Metering overhead, ledger appends, and the gateway's time: server-side by phase, the
    fsync on its own, and the HTTP client's round trip."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["metering"]["tokens_per_s_on"] > 0 and results["metering"]["tokens_per_s_off"] > 0
    assert results["ledger"]["appends_per_s"] > 0
    gw = results["gateway"]
    assert gw["p50_gateway_ms"] > 0 and gw["p50_direct_ms"] > 0
    srv = results["server_side"]
    assert srv["p50_in_process_ms"] > 0 and srv["p50_in_process_no_fsync_ms"] > 0 and srv["fsync_p50_ms"] > 0
    for phases in (srv["phases_p50_ms"], srv["phases_no_fsync_p50_ms"]):
        assert list(phases) == list(PHASES) and all(v > 0 for v in phases.values())
    assert "server-side" in printed and "fsync" in printed and "HTTP client" in printed
