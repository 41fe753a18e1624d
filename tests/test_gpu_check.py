"""scripts/gpu_check.py is ready for a GPU: its dry run runs every Llama stage on the CPU.

``--dry-run`` builds the tiny random-weight Llama config, serves it on the transformers
engine in a real Service, and runs the metering stages, the comparison with transformers'
``generate`` and both economy candidates end to end on the CPU, then prints the summary
table last. The GPU figures themselves come only from a run on a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers")),
    reason="the Llama stages need torch and transformers: pip install -e '.[hf]'",
)
def test_the_dry_run_runs_every_llama_stage_and_prints_the_table_last(tmp_path: Path) -> None:
    """Exit 0; every llama_* section ok; the table's last rows are the Llama's own."""
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run", "--model", "llama",
         "--out", str(out), "--home", str(tmp_path / "home")],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    llama = {k: v for k, v in report["sections"].items() if k.startswith("llama_")}
    assert set(llama) == {
        "llama_build", "llama_throughput", "llama_fixed_prompt_ru", "llama_calibration",
        "llama_accuracy", "llama_vs_generate", "llama_economy", "llama_shutdown",
    }  # fmt: skip
    assert all(v["ok"] for v in llama.values())
    assert llama["llama_throughput"]["data"]["conservation_error_us"] == 0
    assert llama["llama_vs_generate"]["data"]["ratio"] > 0
    economy = llama["llama_economy"]["data"]
    assert {"int8-weight-only", "fp8-e4m3"} <= set(economy)
    assert all("gate" in economy[k] for k in ("int8-weight-only", "fp8-e4m3"))
    last = proc.stdout.strip().splitlines()[-3:]
    assert last[0].startswith("tokens/s vs transformers generate (batched)")
    assert last[-1].startswith("economy fp8-e4m3 vs fp32")
