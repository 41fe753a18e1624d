"""The built-in tiny-gpt: its graph computes GPT-2; its files are written once, atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]  # ships no type information
import pytest

from infermeter.core.timing import NullTimer
from infermeter.runtime.builtin_model import (
    BUILTIN_CONFIG,
    DecoderConfig,
    Weights,
    build_decoder_onnx,
    ensure_builtin_model,
    random_weights,
)
from infermeter.runtime.engine import SeqInput
from infermeter.runtime.ort_backend import OrtEngine
from infermeter.runtime.tokenizer import load_tokenizer

SMALL = DecoderConfig(n_embd=16, n_layer=1, n_head=2, n_inner=32, n_positions=32)


def _layer_norm(
    x: npt.NDArray[np.float64], g: npt.NDArray[np.float32], b: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    out: npt.NDArray[np.float64] = (x - mu) / np.sqrt(var + 1e-5) * g + b
    return out


def _numpy_gpt2(w: Weights, cfg: DecoderConfig, tokens: list[int]) -> npt.NDArray[np.float64]:
    """Textbook GPT-2 forward (pre-LN, causal, erf GELU, tied head) for one unpadded sequence."""
    n, h, hd = len(tokens), cfg.n_head, cfg.head_dim
    x = w["wte"][tokens].astype(np.float64) + w["wpe"][:n]
    causal = np.tril(np.ones((n, n), bool))
    erf = np.vectorize(math.erf)
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        a = _layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        q, k, v = np.split(a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"], 3, axis=-1)
        q, k, v = (t.reshape(n, h, hd).transpose(1, 0, 2) for t in (q, k, v))
        s = np.where(causal, q @ k.transpose(0, 2, 1) / math.sqrt(hd), -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        x = (
            x
            + ctx.transpose(1, 0, 2).reshape(n, -1) @ w[p + "attn.c_proj.weight"]
            + w[p + "attn.c_proj.bias"]
        )
        m = (
            _layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"]) @ w[p + "mlp.c_fc.weight"]
            + w[p + "mlp.c_fc.bias"]
        )
        m = 0.5 * m * (1 + erf(m / math.sqrt(2)))
        x = x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    result: npt.NDArray[np.float64] = _layer_norm(x, w["ln_f.weight"], w["ln_f.bias"]) @ w["wte"].T
    return result


def _feeds(
    cfg: DecoderConfig, ids: list[list[int]], mask: list[list[int]]
) -> dict[str, npt.NDArray[np.generic]]:
    b, n = len(ids), len(ids[0])
    feeds: dict[str, npt.NDArray[np.generic]] = {
        "input_ids": np.array(ids, np.int64),
        "attention_mask": np.array(mask, np.int64),
        "position_ids": np.tile(np.arange(n, dtype=np.int64), (b, 1)),
    }
    for i in range(cfg.n_layer):
        for part in ("key", "value"):
            feeds[f"past_key_values.{i}.{part}"] = np.zeros((b, cfg.n_head, 0, cfg.head_dim), np.float32)
    return feeds


def test_graph_computes_gpt2() -> None:
    """The ONNX graph's logits at every position equal a plain numpy GPT-2 forward."""
    w = random_weights(SMALL, seed=3, std=0.3)
    session = ort.InferenceSession(
        build_decoder_onnx(w, SMALL).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    tokens = [5, 200, 17, 42, 99, 3, 256]
    logits = session.run(["logits"], _feeds(SMALL, [tokens], [[1] * 7]))[0]
    np.testing.assert_allclose(logits[0], _numpy_gpt2(w, SMALL, tokens), atol=1e-4)


def test_all_masked_rows_are_finite() -> None:
    """A pad row whose keys are all masked yields finite logits, not NaN."""
    w = random_weights(SMALL, seed=3, std=0.3)
    session = ort.InferenceSession(
        build_decoder_onnx(w, SMALL).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    logits = session.run(["logits"], _feeds(SMALL, [[0, 0, 0], [1, 2, 3]], [[0, 0, 0], [1, 1, 1]]))[0]
    assert np.isfinite(logits).all()


def test_build_rejects_misshapen_weights() -> None:
    """A missing or wrongly shaped weight is refused with its name and the expected shape."""
    w = random_weights(SMALL)
    w["h.0.mlp.c_fc.weight"] = np.zeros((16, 31), np.float32)
    with pytest.raises(ValueError, match=r"h\.0\.mlp\.c_fc\.weight.*\(16, 32\)"):
        build_decoder_onnx(w, SMALL)


def test_random_weights_are_seeded() -> None:
    """The same seed gives the same weights, so the unshipped built-in model is reproducible."""
    a, b = random_weights(SMALL), random_weights(SMALL)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_builtin_model(tmp_path_factory.mktemp("home") / "models" / "tiny-gpt")


def test_ensure_builtin_model_writes_valid_files(builtin_dir: Path) -> None:
    """model.onnx passes onnx.checker and loads in onnxruntime; config.json has HF-style keys."""
    onnx.checker.check_model(str(builtin_dir / "model.onnx"), full_check=True)
    ort.InferenceSession(str(builtin_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    config = json.loads((builtin_dir / "config.json").read_text())
    assert config["name"] == "tiny-gpt"
    assert config["tokenizer_class"] == "infermeter-bytes"
    assert (config["vocab_size"], config["n_embd"], config["n_layer"], config["n_head"]) == (
        260,
        128,
        4,
        4,
    )
    assert (config["n_positions"], config["eos_token_id"], config["model_type"]) == (
        1024,
        256,
        "gpt2",
    )
    assert not list(builtin_dir.glob("*.tmp"))


def test_ensure_builtin_model_is_idempotent(builtin_dir: Path) -> None:
    """A second call leaves the existing files untouched."""
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in builtin_dir.iterdir()}
    assert ensure_builtin_model(builtin_dir) == builtin_dir
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in builtin_dir.iterdir()}
    assert before == after


def _greedy(engine: OrtEngine, seq_id: str, prompt: list[int], n: int) -> list[int]:
    out: list[int] = []
    tokens = prompt
    for _ in range(n):
        token = int(np.argmax(engine.step([SeqInput(seq_id, tokens)]).logits[seq_id]))
        out.append(token)
        tokens = [token]
    engine.release(seq_id)
    return out


def test_greedy_generation_is_deterministic(builtin_dir: Path) -> None:
    """Greedy decoding of the same prompt gives the same tokens, within and across engine loads."""
    tok = load_tokenizer(builtin_dir)
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Hello"}]))
    first = OrtEngine.load(builtin_dir, timer=NullTimer(), intra_op_threads=1)
    second = OrtEngine.load(builtin_dir, timer=NullTimer(), intra_op_threads=1)
    runs = [
        _greedy(first, "a", prompt, 12),
        _greedy(first, "b", prompt, 12),
        _greedy(second, "a", prompt, 12),
    ]
    assert runs[0] == runs[1] == runs[2]
    assert first.info.max_seq_len == BUILTIN_CONFIG.n_positions == 1024
    assert first.info.model == "tiny-gpt"
