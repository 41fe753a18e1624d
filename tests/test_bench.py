"""`infermeter bench --quick` runs end to end and reports the three figures it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_quick_reports_all_figures(tmp_path: Path) -> None:
    """The benchmark command measures metering overhead, ledger appends and gateway latency."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "infermeter.cli.main", "bench", "--quick", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert results["metering"]["tokens_per_s_on"] > 0 and results["metering"]["tokens_per_s_off"] > 0
    assert results["ledger"]["appends_per_s"] > 0
    gw = results["gateway"]
    assert gw["p50_gateway_ms"] > 0 and gw["p50_direct_ms"] > 0
    assert "gateway added p50 latency" in proc.stdout
