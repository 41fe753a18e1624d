"""Train the built-in tiny-gpt on the Python standard library's own docstrings (offline, CPU).

Writes ``src/infermeter/data/tiny-gpt.npz``: float32 weights named as
``infermeter.runtime.builtin_model.build_decoder_onnx`` expects. PyTorch is not a project
dependency; run this from a separate environment::

    python3 -m venv /tmp/trainvenv && /tmp/trainvenv/bin/pip install torch numpy
    nice -n 10 /tmp/trainvenv/bin/python scripts/train_builtin.py --minutes 30 --threads 1

The architecture constants below must match ``BUILTIN_CONFIG`` (this script cannot import
infermeter, which needs onnx). ``--reference-out`` also saves torch's logits for a fixed
prompt so the ONNX graph built from the saved weights can be checked against them.

Corpus: every docstring reachable from the standard library's modules (module, class,
function and method docs, via ``inspect.getdoc``) plus pydoc's language-reference topics,
as UTF-8 bytes with the eos id (256) between documents, so the model learns to stop.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import io
import math
import pkgutil
import random
import sys
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VOCAB, D, LAYERS, HEADS, FFN, POSITIONS, EOS = 260, 128, 4, 4, 512, 1024, 256
OUT = Path(__file__).resolve().parent.parent / "src" / "infermeter" / "data" / "tiny-gpt.npz"
# Importing these has side effects (windows, browsers, printing) or pulls in test suites.
_SKIP = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "test",
    "lib2to3",
    "ensurepip",
    "venv",
    "__phello__",
    "_pydev_bundle",
    "pydoc_data",
    "xxsubtype",
}


def build_corpus() -> list[str]:
    """Docstrings of stdlib modules and their members, deduplicated, in a stable order."""
    docs: dict[str, None] = {}
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in _SKIP)
    for name in names:
        module = _import(name)
        if module is None:
            continue
        _collect(module, docs, depth=0)
        for sub in sorted(m.name for m in pkgutil.iter_modules(getattr(module, "__path__", []))):
            if not sub.startswith("_") and sub not in _SKIP and "test" not in sub:
                submodule = _import(f"{name}.{sub}")
                if submodule is not None:
                    _collect(submodule, docs, depth=0)
    from pydoc_data.topics import topics

    for key in sorted(topics):
        docs.setdefault(topics[key].strip())
    return [d for d in docs if len(d) >= 40]


def _import(name: str) -> object | None:
    try:
        with (
            warnings.catch_warnings(),
            redirect_stdout(io.StringIO()),
            redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # platform-specific modules fail to import, some with SystemExit
        return None


def _collect(obj: object, docs: dict[str, None], depth: int) -> None:
    doc = inspect.getdoc(obj)
    if doc:
        docs.setdefault(doc.strip())
    if depth >= 2:
        return
    for attr in sorted(getattr(obj, "__dict__", {})):
        if attr.startswith("_"):
            continue
        member = getattr(obj, "__dict__", {})[attr]
        if inspect.isclass(member) or inspect.isroutine(member) or isinstance(member, property):
            if (
                str(getattr(member, "__module__", None) or "").split(".")[0]
                in sys.stdlib_module_names
            ):
                _collect(member, docs, depth + 1)


def encode(docs: list[str]) -> np.ndarray:
    ids: list[int] = []
    for doc in docs:
        ids.extend(doc.encode("utf-8"))
        ids.append(EOS)
    return np.array(ids, np.int64)


class TinyGPT(nn.Module):
    """GPT-2 pre-LN decoder with Conv1D-style ``x @ W`` weights, erf GELU, tied head."""

    def __init__(self) -> None:
        super().__init__()
        p: dict[str, nn.Parameter] = {}

        def normal(*shape: int, std: float = 0.02) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape) * std)

        p["wte"], p["wpe"] = normal(VOCAB, D), normal(POSITIONS, D, std=0.01)
        resid_std = 0.02 / math.sqrt(2 * LAYERS)
        for i in range(LAYERS):
            q = f"h.{i}."
            for ln in ("ln_1", "ln_2"):
                p[q + ln + ".weight"], p[q + ln + ".bias"] = (
                    nn.Parameter(torch.ones(D)),
                    nn.Parameter(torch.zeros(D)),
                )
            p[q + "attn.c_attn.weight"], p[q + "attn.c_attn.bias"] = (
                normal(D, 3 * D),
                nn.Parameter(torch.zeros(3 * D)),
            )
            p[q + "attn.c_proj.weight"], p[q + "attn.c_proj.bias"] = (
                normal(D, D, std=resid_std),
                nn.Parameter(torch.zeros(D)),
            )
            p[q + "mlp.c_fc.weight"], p[q + "mlp.c_fc.bias"] = (
                normal(D, FFN),
                nn.Parameter(torch.zeros(FFN)),
            )
            p[q + "mlp.c_proj.weight"], p[q + "mlp.c_proj.bias"] = (
                normal(FFN, D, std=resid_std),
                nn.Parameter(torch.zeros(D)),
            )
        p["ln_f.weight"], p["ln_f.bias"] = nn.Parameter(torch.ones(D)), nn.Parameter(torch.zeros(D))
        self.names = list(p)
        self.params = nn.ParameterDict({k.replace(".", "__"): v for k, v in p.items()})

    def w(self, name: str) -> torch.Tensor:
        return self.params[name.replace(".", "__")]

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, n = ids.shape
        x = self.w("wte")[ids] + self.w("wpe")[pos]
        for i in range(LAYERS):
            q = f"h.{i}."
            a = F.layer_norm(x, (D,), self.w(q + "ln_1.weight"), self.w(q + "ln_1.bias"), 1e-5)
            qkv = a @ self.w(q + "attn.c_attn.weight") + self.w(q + "attn.c_attn.bias")
            qh, kh, vh = (
                t.view(b, n, HEADS, D // HEADS).transpose(1, 2) for t in qkv.split(D, dim=-1)
            )
            ctx = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
            ctx = ctx.transpose(1, 2).reshape(b, n, D)
            x = x + ctx @ self.w(q + "attn.c_proj.weight") + self.w(q + "attn.c_proj.bias")
            m = F.layer_norm(x, (D,), self.w(q + "ln_2.weight"), self.w(q + "ln_2.bias"), 1e-5)
            m = F.gelu(m @ self.w(q + "mlp.c_fc.weight") + self.w(q + "mlp.c_fc.bias"))
            x = x + m @ self.w(q + "mlp.c_proj.weight") + self.w(q + "mlp.c_proj.bias")
        x = F.layer_norm(x, (D,), self.w("ln_f.weight"), self.w("ln_f.bias"), 1e-5)
        return x @ self.w("wte").T


def batch(data: np.ndarray, size: int, block: int, rng: random.Random) -> tuple[torch.Tensor, ...]:
    """Random windows; a quarter start their positions at a random offset so that positions
    past ``block`` are trained too (inference may run up to POSITIONS tokens)."""
    starts = [rng.randrange(len(data) - block - 1) for _ in range(size)]
    x = torch.from_numpy(np.stack([data[s : s + block] for s in starts]))
    y = torch.from_numpy(np.stack([data[s + 1 : s + block + 1] for s in starts]))
    offsets = [
        rng.randrange(POSITIONS - block + 1) if rng.random() < 0.25 else 0 for _ in range(size)
    ]
    pos = torch.tensor(offsets)[:, None] + torch.arange(block)[None, :]
    return x, y, pos


@torch.no_grad()
def sample(model: TinyGPT, prompt: str, n: int) -> str:
    ids = list(prompt.encode("utf-8"))
    for _ in range(n):
        ctx = ids[-POSITIONS:]
        logits = model(torch.tensor([ctx]), torch.arange(len(ctx))[None])[0, -1]
        token = int(logits.argmax())
        if token == EOS:
            break
        ids.append(token)
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--reference-out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    docs = build_corpus()
    random.Random(0).shuffle(docs)
    data = encode(docs)
    split = int(len(data) * 0.98)
    train, val = data[:split], data[split:]
    print(f"corpus: {len(docs):,} docs, {len(data):,} bytes", flush=True)

    model = TinyGPT()
    decay = [p for n, p in model.params.items() if p.dim() == 2]
    no_decay = [p for n, p in model.params.items() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    budget = args.minutes * 60
    start, step = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < budget:
        frac = elapsed / budget
        lr = (
            args.lr
            * min(1.0, (step + 1) / 100)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        )
        for g in opt.param_groups:
            g["lr"] = lr
        x, y, pos = batch(train, args.batch, args.block, rng)
        loss = F.cross_entropy(model(x, pos).reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            with torch.no_grad():
                vr = random.Random(0)
                vx, vy, vpos = batch(val, 16, args.block, vr)
                vloss = F.cross_entropy(model(vx, vpos).reshape(-1, VOCAB), vy.reshape(-1)).item()
            minutes = elapsed / 60
            print(
                f"step {step} {minutes:.1f} min lr {lr:.2e} loss {loss.item():.3f} val {vloss:.3f}"
            )
        if step % 500 == 0:
            print(repr(sample(model, "Return the", 120)), flush=True)

    model.eval()
    for prompt in ("Return the", "User: What does a list do?\nAssistant:", "This module provides"):
        print(repr(sample(model, prompt, 200)), flush=True)
    weights = {n: model.w(n).detach().numpy().astype(np.float32) for n in model.names}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez(tmp, **weights)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) after {step} steps", flush=True)
    if args.reference_out is not None:
        ids = list(b"Return a new list of the items.")
        with torch.no_grad():
            logits = model(torch.tensor([ids]), torch.arange(len(ids))[None])[0].numpy()
        np.savez(args.reference_out, ids=np.array(ids, np.int64), logits=logits)


if __name__ == "__main__":
    main()
