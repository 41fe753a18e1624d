"""The built-in model "tiny-gpt": a small GPT-2-style decoder written as an ONNX graph.

The graph uses the Hugging Face Optimum decoder layout, so ``OrtEngine`` runs it exactly like
a user's exported model:

    inputs   input_ids [batch, seq] int64, attention_mask [batch, past+seq] int64,
             position_ids [batch, seq] int64,
             past_key_values.{i}.key / .value [batch, heads, past, head_dim] float32
    outputs  logits [batch, seq, vocab] float32,
             present.{i}.key / .value [batch, heads, past+seq, head_dim] float32

Masking is done inside the graph and is correct for left padding of both the past and the
new tokens: query ``j`` of ``N`` new tokens sees key ``k`` iff ``k <= P + j`` (``P`` = past
length) and ``attention_mask[k] == 1``. Masked scores get a large finite negative, so a pad
row with every key masked becomes a uniform softmax instead of NaN.

Weights (names follow GPT-2 with the Conv1D ``x @ W`` convention; the LM head is tied to
``wte``): ``wte`` [V, D], ``wpe`` [P, D], ``h.{i}.ln_1.{weight,bias}``,
``h.{i}.attn.c_attn.{weight [D, 3D], bias}``, ``h.{i}.attn.c_proj.{weight [D, D], bias}``,
``h.{i}.ln_2.{weight,bias}``, ``h.{i}.mlp.c_fc.{weight [D, F], bias}``,
``h.{i}.mlp.c_proj.{weight [F, D], bias}``, ``ln_f.{weight,bias}``. The MLP uses exact (erf) GELU.

No torch at runtime: the graph is written with ``onnx.helper`` over numpy arrays.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from infermeter.runtime.catalog import BUILTIN_MODEL_NAME as BUILTIN_MODEL_NAME
from infermeter.runtime.tokenizer import BYTE_TOKENIZER_CLASS, ByteTokenizer

OPSET = 17
_MASK_VALUE = -1.0e9  # finite: all-masked pad rows give a uniform softmax, never NaN
_INIT_SEED = 20240601
_TRAINED_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "tiny-gpt.npz"

Weights = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    """Shape of a GPT-2-style decoder. ``n_positions`` is also the engine's max_seq_len."""

    vocab_size: int = 260
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_inner: int = 512
    n_positions: int = 1024
    eos_token_id: int = ByteTokenizer.eos_token_id
    layer_norm_epsilon: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def hf_config(self, *, name: str = BUILTIN_MODEL_NAME, weights: str = "random") -> dict[str, Any]:
        """config.json contents: Hugging Face GPT-2 keys plus infermeter's own."""
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            **asdict(self),
            "tie_word_embeddings": True,
            "activation_function": "gelu",
            "tokenizer_class": BYTE_TOKENIZER_CLASS,
            "name": name,
            "weights": weights,
        }


BUILTIN_CONFIG = DecoderConfig()


def weight_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Every weight name ``build_decoder_onnx`` expects, with its shape."""
    d, f = config.n_embd, config.n_inner
    shapes: dict[str, tuple[int, ...]] = {
        "wte": (config.vocab_size, d),
        "wpe": (config.n_positions, d),
        "ln_f.weight": (d,),
        "ln_f.bias": (d,),
    }
    for i in range(config.n_layer):
        p = f"h.{i}."
        shapes |= {
            p + "ln_1.weight": (d,),
            p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d),
            p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d),
            p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,),
            p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (d, f),
            p + "mlp.c_fc.bias": (f,),
            p + "mlp.c_proj.weight": (f, d),
            p + "mlp.c_proj.bias": (d,),
        }
    return shapes


def random_weights(config: DecoderConfig, *, seed: int = _INIT_SEED, std: float = 0.02) -> Weights:
    """Seeded GPT-2-style init: normal(0, std) matrices, unit LayerNorm gains, zero biases."""
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for name, shape in weight_shapes(config).items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            weights[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            weights[name] = np.zeros(shape, np.float32)
        else:
            weights[name] = (rng.standard_normal(shape) * std).astype(np.float32)
    return weights


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def init(self, name: str, value: npt.ArrayLike, dtype: Any = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        self._n += 1
        name = out or f"{op_type.lower()}_{self._n}"
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [name], name=f"n{self._n}_{op_type}", **attrs)
        )
        return name

    def linear(self, x: str, w: str, b: str) -> str:
        return self.op("Add", self.op("MatMul", x, w), b)

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op("LayerNormalization", x, prefix + ".weight", prefix + ".bias", axis=-1, epsilon=eps)


def build_decoder_onnx(weights: Weights, config: DecoderConfig) -> onnx.ModelProto:
    """The decoder graph of this module's docstring, with ``weights`` as initializers."""
    expected = weight_shapes(config)
    for name, shape in expected.items():
        got = weights.get(name)
        if got is None or tuple(got.shape) != shape:
            found = None if got is None else tuple(got.shape)
            raise ValueError(f"weight {name!r} has shape {found}; the config needs {shape}")
    g = _Graph()
    for name in expected:
        g.init(name, weights[name])
    d, h, hd = config.n_embd, config.n_head, config.head_dim
    g.init("lm_head", np.ascontiguousarray(weights["wte"].T))
    g.init("qkv_split", [d, d, d], np.int64)
    g.init("heads_shape", [0, 0, h, hd], np.int64)
    g.init("merge_shape", [0, 0, d], np.int64)
    g.init("scale", 1.0 / np.sqrt(hd))
    g.init("zero", 0, np.int64)
    g.init("one", 1, np.int64)
    g.init("mask_value", _MASK_VALUE)
    g.init("no_bias", 0.0)
    g.init("axes_1", [1], np.int64)
    g.init("axes_01", [0, 1], np.int64)
    g.init("axes_12", [1, 2], np.int64)
    g.init("inv_sqrt2", 1.0 / np.sqrt(2.0))
    g.init("half", 0.5)
    g.init("f_one", 1.0)

    # Mask [batch, 1, seq, past+seq]: causal over the key axis and zero where attention_mask is.
    seq = g.op("Squeeze", g.op("Shape", "input_ids", start=1, end=2))
    total = g.op("Squeeze", g.op("Shape", "attention_mask", start=1, end=2))
    past = g.op("Sub", total, seq)
    q_idx = g.op("Unsqueeze", g.op("Range", "zero", seq, "one"), "axes_1")  # [seq, 1]
    k_idx = g.op("Range", "zero", total, "one")  # [total]
    causal = g.op("LessOrEqual", k_idx, g.op("Add", q_idx, past))  # [seq, total]
    keep = g.op("Cast", "attention_mask", to=TensorProto.BOOL)
    keep = g.op("Unsqueeze", keep, "axes_12")  # [batch, 1, 1, total]
    allowed = g.op("And", g.op("Unsqueeze", causal, "axes_01"), keep)
    bias = g.op("Where", allowed, "no_bias", "mask_value")

    x = g.op("Add", g.op("Gather", "wte", "input_ids"), g.op("Gather", "wpe", "position_ids"))
    eps = config.layer_norm_epsilon
    for i in range(config.n_layer):
        p = f"h.{i}."
        a = g.layer_norm(x, p + "ln_1", eps)
        qkv = g.linear(a, p + "attn.c_attn.weight", p + "attn.c_attn.bias")
        q, k, v = (f"{p}q", f"{p}k", f"{p}v")
        g.nodes.append(helper.make_node("Split", [qkv, "qkv_split"], [q, k, v], axis=-1, name=f"{p}split"))
        q, k, v = (g.op("Transpose", g.op("Reshape", t, "heads_shape"), perm=[0, 2, 1, 3]) for t in (q, k, v))
        k = g.op("Concat", f"past_key_values.{i}.key", k, axis=2, out=f"present.{i}.key")
        v = g.op("Concat", f"past_key_values.{i}.value", v, axis=2, out=f"present.{i}.value")
        scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
        scores = g.op("Add", g.op("Mul", scores, "scale"), bias)
        ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), "merge_shape")
        x = g.op("Add", x, g.linear(ctx, p + "attn.c_proj.weight", p + "attn.c_proj.bias"))
        m = g.linear(g.layer_norm(x, p + "ln_2", eps), p + "mlp.c_fc.weight", p + "mlp.c_fc.bias")
        # exact GELU, 0.5·x·(1 + erf(x/√2)); ORT fuses this pattern into its Gelu kernel
        m = g.op(
            "Mul",
            g.op("Mul", m, "half"),
            g.op("Add", g.op("Erf", g.op("Mul", m, "inv_sqrt2")), "f_one"),
        )
        x = g.op("Add", x, g.linear(m, p + "mlp.c_proj.weight", p + "mlp.c_proj.bias"))
    g.op("MatMul", g.layer_norm(x, "ln_f", eps), "lm_head", out="logits")

    def kv(name: str, length: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch_size", h, length, hd])

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info(
            "attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]
        ),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [
        helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["batch_size", "sequence_length", config.vocab_size]
        )
    ]
    for i in range(config.n_layer):
        inputs += [
            kv(f"past_key_values.{i}.key", "past_sequence_length"),
            kv(f"past_key_values.{i}.value", "past_sequence_length"),
        ]
        outputs += [
            kv(f"present.{i}.key", "total_sequence_length"),
            kv(f"present.{i}.value", "total_sequence_length"),
        ]
    graph = helper.make_graph(g.nodes, "tiny_gpt_decoder", inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="infermeter"
    )
    model.ir_version = 8  # onnxruntime >= 1.15 reads IR 8; newer onnx writes a higher default
    return model


def load_builtin_weights(config: DecoderConfig = BUILTIN_CONFIG) -> tuple[Weights, str]:
    """Trained weights from ``data/tiny-gpt.npz`` when shipped, else the seeded random init.

    Returns the weights and their kind, ``"trained"`` or ``"random"``.
    """
    if _TRAINED_WEIGHTS.is_file():
        with np.load(_TRAINED_WEIGHTS) as npz:
            return {k: npz[k].astype(np.float32) for k in npz.files}, "trained"
    return random_weights(config), "random"


def ensure_builtin_model(dest_dir: Path) -> Path:
    """Write tiny-gpt's ``model.onnx`` and ``config.json`` into ``dest_dir`` unless both exist.

    Idempotent: existing files are left alone. Each file is written to a temporary name in
    the same directory and renamed into place, so a reader never sees a half-written file;
    config.json is written last, so its presence means the model is complete.
    """
    dest_dir = Path(dest_dir)
    model_path, config_path = dest_dir / "model.onnx", dest_dir / "config.json"
    if model_path.is_file() and config_path.is_file():
        return dest_dir
    dest_dir.mkdir(parents=True, exist_ok=True)
    weights, kind = load_builtin_weights(BUILTIN_CONFIG)
    model = build_decoder_onnx(weights, BUILTIN_CONFIG)
    _atomic_write(model_path, model.SerializeToString())
    config = BUILTIN_CONFIG.hf_config(weights=kind)
    _atomic_write(config_path, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
    return dest_dir


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
