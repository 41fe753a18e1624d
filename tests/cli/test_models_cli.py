"""infermeter models add|list: the CLI over the import, with exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infermeter.cli.main import main
from tests.smollm2 import MODEL, imported_home


def test_models_list_shows_the_added_model_and_its_engines(capsys: pytest.CaptureFixture[str]) -> None:
    """models list --json: the GGUF-imported model with its FP32 and INT8 engines."""
    home = imported_home()
    capsys.readouterr()
    assert main(["--home", str(home), "models", "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["name"], row["kind"]) == (MODEL, "gguf")
    assert sorted(e.split("-")[2] for e in row["engines"]) == ["fp32", "int8"]


def test_engines_show_prints_the_economy_gate_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """engines show on the INT8 engine includes the gate's agreement, |Δlogit| and ms/token."""
    home = imported_home()
    capsys.readouterr()
    main(["--home", str(home), "models", "list", "--json"])
    [int8] = [e for e in json.loads(capsys.readouterr().out)[0]["engines"] if "-int8-" in e]
    assert main(["--home", str(home), "engines", "show", int8]) == 0
    shown = json.loads(capsys.readouterr().out)
    gate = shown["options"]["gate"]
    assert {"token_agreement", "max_logit_diff", "ms_per_token", "fp32_ms_per_token", "passed"} <= set(gate)
    assert shown["status"] == "ok"


def test_models_add_of_a_missing_source_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SOURCE that does not exist is a settings error (exit 2) whose message names it."""
    missing = tmp_path / "nope.gguf"
    assert main(["--home", str(tmp_path / "home"), "models", "add", "m", str(missing)]) == 2
    assert "nope.gguf" in capsys.readouterr().err


def test_models_add_refuses_a_bad_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A NAME with a slash is refused before anything is read, saying what names may hold."""
    assert main(["--home", str(tmp_path / "home"), "models", "add", "a/b", str(tmp_path)]) == 2
    assert "letters, digits" in capsys.readouterr().err
