"""`infermeter engines build|list|show|bench` on a tiny user model directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infermeter.cli.main import main
from infermeter.runtime.compile.testmodel import write_test_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_model(tmp_path_factory.mktemp("model"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_build_list_show_an_fp32_and_an_int8_engine(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both builds land in the index; list shows them ok; show prints the full record. The
    2-layer test model's INT8 is no faster than its FP32 (the gate refuses it on speed), so it
    is built with --force, as an operator serving it anyway would."""
    home = str(tmp_path / "home")
    code, out, _ = run(capsys, "--home", home, "engines", "build", str(model))
    assert code == 0 and "built tiny-user-onnxruntime-fp32-cpu-" in out
    code, out, _ = run(
        capsys,
        "--home",
        home,
        "engines",
        "build",
        str(model),
        "--precision",
        "int8",
        "--max-batch",
        "4",
        "--force",
        "--json",
    )
    record = json.loads(out)
    assert code == 0 and record["precision"] == "int8" and record["max_batch"] == 4
    assert record["drift"]["token_agreement"] > 0.5 and record["options"]["gate"]["forced"] is True
    code, out, _ = run(capsys, "--home", home, "engines", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and sorted(r["precision"] for r in listed) == ["fp32", "int8"]
    assert all(r["status"] == "ok" for r in listed)
    code, out, _ = run(capsys, "--home", home, "engines", "list")
    assert code == 0 and record["engine_id"] in out and "ok" in out
    code, out, _ = run(capsys, "--home", home, "engines", "show", record["sha256"][:10])
    shown = json.loads(out)
    assert shown["engine_id"] == record["engine_id"] and shown["status"] == "ok"
    assert shown["rebuild"].startswith(f"infermeter engines build {model.resolve()} ")
    assert shown["options"]["gate"] == record["options"]["gate"]


def test_an_int8_build_reports_its_gate_and_is_refused_when_it_fails(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --force the build prints the gate's verdict and figures; a failing build's
    status is `refused: <reasons>` (the test model is usually not faster than FP32), a
    passing one's `ok`."""
    home = str(tmp_path / "home")
    code, out, _ = run(capsys, "--home", home, "engines", "build", str(model), "--precision", "int8")
    assert code == 0 and "economy gate: " in out and "ms/token" in out
    _, listed, _ = run(capsys, "--home", home, "engines", "list", "--json")
    (record,) = json.loads(listed)
    gate = record["options"]["gate"]
    if gate["passed"]:
        assert "economy gate: passed" in out and record["status"] == "ok"
    else:
        assert f"economy gate: refused ({'; '.join(gate['reasons'])})" in out
        assert record["status"] == (
            f"refused: {'; '.join(gate['reasons'])}; rebuild with --force to serve it anyway"
        )


def test_show_reports_a_stale_engine_and_an_unknown_one_exits_3(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tampered artifact shows as stale with the rebuild command; a missing id is exit 3."""
    home = tmp_path / "home"
    _, out, _ = run(capsys, "--home", str(home), "engines", "build", str(model), "--json")
    record = json.loads(out)
    (home / "engines" / record["sha256"][:16] / "model.onnx").write_bytes(b"changed")
    _, out, _ = run(capsys, "--home", str(home), "engines", "show", record["engine_id"])
    status = json.loads(out)["status"]
    assert status.startswith("stale: ") and "infermeter engines build" in status
    code, _, err = run(capsys, "--home", str(home), "engines", "show", "no-such-engine")
    assert code == 3 and "engines list" in err


def test_bad_build_arguments_exit_2_with_the_reason(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An impossible backend/precision pair or bucket list is a usage error."""
    home = str(tmp_path / "home")
    code, _, err = run(
        capsys, "--home", home, "engines", "build", str(model), "--backend", "torch", "--precision", "int8"
    )
    assert code == 2 and "torch builds fp32, fp16, bf16" in err
    code, _, err = run(capsys, "--home", home, "engines", "build", str(model), "--decode-buckets", "64,x")
    assert code == 2 and "--decode-buckets" in err


def test_bench_reports_per_engine_throughput(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench measures prefill and decode figures for each engine from its step timer."""
    home = str(tmp_path / "home")
    run(capsys, "--home", home, "engines", "build", str(model), "--precision", "int8")
    code, out, _ = run(
        capsys,
        "--home",
        home,
        "engines",
        "bench",
        "--prompt-tokens",
        "16",
        "--decode-steps",
        "3",
        "--batch",
        "2",
        "--rounds",
        "1",
        "--json",
    )
    report = json.loads(out)
    assert code == 0 and report["machine"] and report["date"]
    (bench,) = report["engines"]
    assert bench["precision"] == "int8" and bench["batch"] == 2
    assert bench["prefill_tokens_per_s"] > 0 and bench["decode_ms_per_token"] > 0
    assert bench["batch_decode_tokens_per_s"] > 0
