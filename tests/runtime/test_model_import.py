"""models add from a GGUF: the model and its engines are indexed, the economy engine gated."""

from __future__ import annotations

from pathlib import Path

import pytest

from infermeter.core.errors import ConfigError
from infermeter.core.types import Precision
from infermeter.runtime.compile import economy_gate
from infermeter.runtime.engine_store import EngineStore
from infermeter.runtime.model_import import source_kind
from tests.smollm2 import MODEL, imported_home


@pytest.fixture(scope="module")
def store() -> EngineStore:
    return EngineStore(imported_home())


def test_a_gguf_import_records_the_model_with_its_chat_template(store: EngineStore) -> None:
    """The GGUF becomes a Hugging Face folder in the store, indexed as kind gguf."""
    [model] = store.models()
    assert (model.name, model.kind) == (MODEL, "gguf")
    assert model.info["architectures"] == ["LlamaForCausalLM"] and model.info["chat_template"]
    folder = Path(model.model_dir)
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert list(folder.glob("*.safetensors"))


def test_the_default_cpu_engines_are_fp32_and_int8_on_transformers(store: EngineStore) -> None:
    """models add builds the transformers FP32 engine and the INT8 economy engine."""
    kinds = sorted((r.backend, r.precision) for r in store.list(MODEL))
    assert kinds == [("transformers", Precision.FP32), ("transformers", Precision.INT8)]


def test_the_economy_engine_passes_the_gate_with_its_figures_recorded(store: EngineStore) -> None:
    """INT8 agrees with FP32, stays within the |Δlogit| bound and is faster per token."""
    [int8] = [r for r in store.list(MODEL) if r.precision == Precision.INT8]
    gate = economy_gate.GateReport.from_json(int8.options["gate"])
    assert gate.passed and not gate.reasons and not gate.forced
    assert gate.token_agreement >= economy_gate.MIN_AGREEMENT
    assert gate.max_logit_diff <= economy_gate.MAX_LOGIT_DIFF
    assert gate.ms_per_token < gate.fp32_ms_per_token
    assert int8.drift is not None and int8.drift.token_agreement == gate.token_agreement


def test_the_imported_tokenizer_renders_the_models_own_chat_template(store: EngineStore) -> None:
    """Chat messages become SmolLM2's ChatML prompt, not infermeter's plain template."""
    from infermeter.runtime.hf_tokenizer import TransformersTokenizer

    [fp32] = [r for r in store.list(MODEL) if r.precision == Precision.FP32]
    tok = TransformersTokenizer.from_dir(store.path(fp32))
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(tok.encode("Hello world")) == "Hello world"
    assert tok.eos_token_id == tok.encode("<|im_end|>")[-1]


def test_a_source_that_is_no_model_is_refused_naming_what_one_needs(tmp_path: Path) -> None:
    """An empty folder is neither GGUF, HF folder nor ONNX export: the error lists all three."""
    with pytest.raises(ConfigError, match=r"\.gguf file, a Hugging Face folder .* Optimum ONNX export"):
        source_kind(tmp_path)


@pytest.mark.parametrize(
    ("agreement", "diff", "ms", "reason"),
    [(0.5, 1.0, 10.0, "greedy agreement 50.0%"), (0.99, 25.0, 10.0, "max |Δlogit| 25.00"),
     (0.99, 1.0, 30.0, "30.00 ms/token is not below")],
)  # fmt: skip
def test_the_gate_refuses_drift_or_no_speedup(agreement: float, diff: float, ms: float, reason: str) -> None:
    """Past either drift threshold, or not faster than FP32 (20 ms), the build fails."""
    gate = economy_gate.decide(agreement, diff, ms, 20.0, prompts=5, positions=80)
    assert not gate.passed and not gate.serves
    assert any(reason in r for r in gate.reasons)
    assert economy_gate.decide(agreement, diff, ms, 20.0, prompts=5, positions=80, forced=True).serves
