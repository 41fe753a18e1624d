"""Train the built-in tiny-gpt on the Python standard library's docstrings (offline, CPU).

Writes ``src/infermeter/data/tiny-gpt.npz``: float32 weights named as
``infermeter.runtime.builtin_model.build_decoder_onnx`` expects. PyTorch is not a project
dependency; run this from a separate environment::

    python3 -m venv /tmp/trainvenv && /tmp/trainvenv/bin/pip install torch numpy
    nice -n 10 /tmp/trainvenv/bin/python scripts/train_builtin.py --minutes 30 --threads 1

``--init`` warm-starts from saved weights (the shipped npz, say) instead of a random init.
The architecture constants below must match ``BUILTIN_CONFIG`` (this script cannot import
infermeter, which needs onnx). ``--reference-out`` also saves torch's logits for a fixed
chat prompt so the ONNX graph built from the saved weights can be checked against them.

Two corpora, each UTF-8 bytes with the eos id (256) after every document so the model
learns to stop, mixed per window by ``--chat-share``:

* plain text: every docstring reachable from the standard library's modules (module,
  class, function and method docs, via ``inspect.getdoc``) plus pydoc's topics;
* chats: synthetic exchanges in exactly ``infermeter.runtime.tokenizer.render_chat``'s
  template, ``"User: What does json.dumps do?\\nAssistant: Serialize obj to a JSON
  formatted str.<eos>"``, where the answer is the first sentence of the object's own
  docstring; several phrasings, some with a ``System:`` line or an earlier exchange.
  Half the chat windows start at a chat's first byte at position 0, as a served prompt does.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import io
import math
import pkgutil
import random
import re
import sys
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
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
    for _, module in _modules():
        _collect(module, docs, depth=0)
    from pydoc_data.topics import topics

    for key in sorted(topics):
        docs.setdefault(topics[key].strip())
    return [d for d in docs if len(d) >= 40]


def _modules() -> Iterator[tuple[str, object]]:
    """Importable public stdlib modules and their public submodules, by name.

    Lazy on purpose: a module is yielded before its submodules are imported, since importing
    one can shadow a parent's attribute of the same name (``curses.has_key``).
    """
    for name in sorted(n for n in sys.stdlib_module_names if not n.startswith("_")):
        module = None if name in _SKIP else _import(name)
        if module is None:
            continue
        yield name, module
        for sub in sorted(m.name for m in pkgutil.iter_modules(getattr(module, "__path__", []))):
            if not sub.startswith("_") and sub not in _SKIP and "test" not in sub:
                submodule = _import(f"{name}.{sub}")
                if submodule is not None:
                    yield f"{name}.{sub}", submodule


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
            if str(getattr(member, "__module__", None) or "").split(".")[0] in sys.stdlib_module_names:
                _collect(member, docs, depth + 1)


# --- synthetic chats ------------------------------------------------------------------------

# Modules whose contents are asked about under another name (os.path) or are boilerplate.
_CHAT_SKIP = {"posix", "posixpath", "ntpath", "nt", "encodings"}
# (defining module, public module) pairs where the public one re-exports the other's members
_REEXPORTS = {("posix", "os"), ("genericpath", "posixpath")}
# What people ask about first; these get ``--popular-weight`` times as many chats, since the
# model is too small to learn every answer and a demo should get the familiar ones right.
_POPULAR = set(
    "builtins os os.path sys json re math random time datetime collections itertools functools"
    " pathlib subprocess shutil string typing logging csv statistics heapq bisect copy glob"
    " hashlib base64 textwrap urllib.parse uuid zipfile tempfile argparse sqlite3 pickle socket"
    " threading asyncio io operator enum dataclasses contextlib decimal fractions struct queue"
    " secrets platform pprint difflib calendar gzip fnmatch inspect traceback warnings".split()
)
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*-+>.*)?$|^[\w.]+\s*-+>")
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)\.(?=\s|$)")
_MARKUP = [
    (re.compile(r"\s*<https?://[^>]*>"), ""),
    (re.compile(r":\w+:`~?([^`]+)`"), r"\1"),
    (re.compile(r"``([^`]+)``"), r"\1"),
    (re.compile(r"`([^`]+)`"), r"\1"),
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])"), r"\1"),
]
_QUESTIONS = {
    "function": [
        "What does {n} do?",
        "What does the {n} function do?",
        "What is {n}?",
        "What is {n} for?",
        "Explain {n}.",
        "Tell me about {n}.",
        "What does {n}() do?",
        "Can you explain {n}?",
        "How does {n} work?",
        "What is the purpose of {n}?",
    ],
    "class": [
        "What is {n}?",
        "What is the {n} class?",
        "What is {n} used for?",
        "Tell me about the {n} class.",
        "Explain {n}.",
        "What does {n} do?",
    ],
    "module": [
        "Tell me about the {n} module.",
        "What is the {n} module?",
        "What does the {n} module do?",
        "What is {n} for?",
        "What is {n}?",
        "Explain the {n} module.",
    ],
}
_QUESTIONS["method"] = [q.replace("function", "method") for q in _QUESTIONS["function"]]
_SYSTEMS = [
    "You are a helpful assistant.",
    "You are a helpful assistant that answers questions about Python.",
    "You are an expert Python programmer.",
    "You answer questions about the Python standard library.",
    "Answer in one sentence.",
    "Be concise.",
    "You are terse.",
    "You are tiny-gpt.",
]
_INTRO = (
    "I am tiny-gpt, a small language model trained on the docstrings of the Python "
    "standard library. Ask me what a function or module does."
)
_SMALL_TALK = {
    "Hello! Ask me what a function or module of the Python standard library does.": [
        "Hello",
        "Hello!",
        "Hi",
        "Hi!",
        "Hi there",
        "Hey",
        "Good morning",
        "hello",
        "hi",
    ],
    _INTRO: ["Who are you?", "What are you?", "What is your name?", "What can you do?", "Help"],
    "You are welcome.": ["Thanks", "Thank you", "Thanks!", "Thank you!", "thanks"],
    "This is a test.": ["Say this is a test", "Say this is a test.", "Say this is a test!"],
}


@dataclass(frozen=True, slots=True)
class Entry:
    """A stdlib object a user may ask about: dotted name, kind, one-sentence answer, and the
    module it was found in."""

    name: str
    kind: str
    answer: str
    module: str


def first_sentence(doc: str) -> str | None:
    """The docstring's first sentence as plain ASCII text, or None if it makes a poor answer."""
    paras = [p for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
    while paras and all(_SIGNATURE.match(line.strip()) for line in paras[0].splitlines()):
        paras = paras[1:]  # C functions' docs open with their signature
    if not paras:
        return None
    text = " ".join(paras[0].split())
    for pattern, repl in _MARKUP:
        text = pattern.sub(repl, text)
    end = _SENTENCE_END.search(text)
    s = text[: end.end()] if end else text + "."
    if not (15 <= len(s) <= 160 and s[0].isupper() and s.isascii() and len(s.split()) >= 3):
        return None
    if any(c in s for c in "<>|`{}\\@=") or s.endswith((":.", ",.")):
        return None
    return s


def chat_entries() -> list[Entry]:
    """Stdlib modules, classes, functions and methods with a usable own docstring.

    Builtins go by bare name (``len``, ``str.split``); ``os.path`` by that name. Answers
    shared by more than three objects (inherited boilerplate) are dropped.
    """
    found: dict[str, Entry] = {}
    modules = [("os.path", importlib.import_module("os.path"))] + [
        (name, m) for name, m in _modules() if name.split(".")[0] not in _CHAT_SKIP
    ]
    for name, module in modules:
        _walk(module, "" if name == "builtins" else name, "module", 0, name, found)
    counts = Counter(e.answer for e in found.values())
    return [e for e in found.values() if counts[e.answer] <= 3]


def _walk(obj: object, name: str, kind: str, depth: int, module: str, found: dict[str, Entry]) -> None:
    raw = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    answer = first_sentence(inspect.cleandoc(raw)) if isinstance(raw, str) else None
    if name and answer and name not in found:
        found[name] = Entry(name, kind, answer, module)
    if depth >= 2:
        return
    for attr, member in sorted(getattr(obj, "__dict__", {}).items()):
        if attr.startswith("_"):
            continue
        if inspect.isclass(member):
            sub_kind = "class"
        elif inspect.isroutine(member):
            sub_kind = "method" if kind == "class" else "function"
        else:
            continue
        owner = str(getattr(member, "__module__", None) or "")
        # re-exports from C accelerators (_json, posix) count; those from other modules do not
        mod_name = getattr(sys.modules.get(module), "__name__", module)  # os.path: posixpath
        if kind == "module" and mod_name != "builtins" and owner != mod_name:
            if not (owner.startswith("_") or (owner, mod_name) in _REEXPORTS):
                continue
        _walk(member, f"{name}.{attr}" if name else attr, sub_kind, depth + 1, module, found)


def render_chat(messages: list[tuple[str, str]]) -> str:
    """Same template as ``infermeter.runtime.tokenizer.render_chat``: must stay identical."""
    return "\n".join([f"{role.capitalize()}: {content}" for role, content in messages] + ["Assistant:"])


def _question(entry: Entry, rng: random.Random) -> str:
    q = rng.choice(_QUESTIONS[entry.kind]).format(n=entry.name)
    if rng.random() < 0.15:  # people type casually too
        q = q.rstrip("?.").lower().replace(entry.name.lower(), entry.name)
    return q


def build_chats(entries: list[Entry], per_entry: int, popular: int, seed: int) -> list[str]:
    """``per_entry`` chats about each entry (rendered prompt, space, answer), ``popular``
    times as many about entries of ``_POPULAR`` modules, and small talk (2%).

    A quarter open with a system line and a tenth carry an earlier exchange first.
    """
    rng = random.Random(seed)
    chats = []
    for entry in entries:
        for _ in range(per_entry * (popular if entry.module in _POPULAR else 1)):
            messages: list[tuple[str, str]] = []
            if rng.random() < 0.25:
                messages.append(("system", rng.choice(_SYSTEMS)))
            if rng.random() < 0.1:
                other = rng.choice(entries)
                messages += [("user", _question(other, rng)), ("assistant", other.answer)]
            messages.append(("user", _question(entry, rng)))
            chats.append(f"{render_chat(messages)} {entry.answer}")
    pairs = [(q, a) for a, qs in _SMALL_TALK.items() for q in qs]
    for _ in range(len(chats) // 50):
        q, a = rng.choice(pairs)
        system = [("system", rng.choice(_SYSTEMS))] if rng.random() < 0.25 else []
        chats.append(f"{render_chat([*system, ('user', q)])} {a}")
    rng.shuffle(chats)
    return chats


# --- training --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stream:
    """Documents as one eos-separated id array, the offset of each document's first id, and
    the share of windows that start at a document's first id (at position 0)."""

    data: np.ndarray
    starts: np.ndarray
    aligned: float


def encode(docs: list[str], aligned: float) -> Stream:
    ids: list[int] = []
    starts = []
    for doc in docs:
        starts.append(len(ids))
        ids.extend(doc.encode("utf-8"))
        ids.append(EOS)
    return Stream(np.array(ids, np.int64), np.array(starts, np.int64), aligned)


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
        param: torch.Tensor = self.params[name.replace(".", "__")]
        return param

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, n = ids.shape
        x = self.w("wte")[ids] + self.w("wpe")[pos]
        for i in range(LAYERS):
            q = f"h.{i}."
            a = F.layer_norm(x, (D,), self.w(q + "ln_1.weight"), self.w(q + "ln_1.bias"), 1e-5)
            qkv = a @ self.w(q + "attn.c_attn.weight") + self.w(q + "attn.c_attn.bias")
            qh, kh, vh = (
                t.view(b, n, HEADS, D // HEADS).transpose(1, 2) for t in torch.split(qkv, D, dim=-1)
            )
            ctx = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
            ctx = ctx.transpose(1, 2).reshape(b, n, D)
            x = x + ctx @ self.w(q + "attn.c_proj.weight") + self.w(q + "attn.c_proj.bias")
            m = F.layer_norm(x, (D,), self.w(q + "ln_2.weight"), self.w(q + "ln_2.bias"), 1e-5)
            m = F.gelu(m @ self.w(q + "mlp.c_fc.weight") + self.w(q + "mlp.c_fc.bias"))
            x = x + m @ self.w(q + "mlp.c_proj.weight") + self.w(q + "mlp.c_proj.bias")
        x = F.layer_norm(x, (D,), self.w("ln_f.weight"), self.w("ln_f.bias"), 1e-5)
        return x @ self.w("wte").T


def batch(
    streams: list[Stream], shares: list[float], size: int, block: int, rng: random.Random
) -> tuple[torch.Tensor, ...]:
    """Windows drawn from ``streams`` by ``shares``. Unaligned windows start anywhere, and a
    quarter of them start their positions at a random offset so that positions past
    ``block`` are trained too (inference may run up to POSITIONS tokens)."""
    xs, ys, offsets = [], [], []
    for _ in range(size):
        s = rng.choices(streams, shares)[0]
        limit = len(s.data) - block - 1
        if rng.random() < s.aligned:
            start = int(s.starts[rng.randrange(int(np.searchsorted(s.starts, limit, "right")))])
            offset = 0
        else:
            start = rng.randrange(limit)
            offset = rng.randrange(POSITIONS - block + 1) if rng.random() < 0.25 else 0
        xs.append(s.data[start : start + block])
        ys.append(s.data[start + 1 : start + block + 1])
        offsets.append(offset)
    pos = torch.tensor(offsets)[:, None] + torch.arange(block)[None, :]
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), pos


@torch.no_grad()
def sample(model: TinyGPT, prompt: str, n: int) -> str:
    """Greedy continuation of ``prompt``, at most ``n`` bytes, stopping at eos."""
    ids = list(prompt.encode("utf-8"))
    for _ in range(n):
        ctx = ids[-POSITIONS:]
        logits = model(torch.tensor([ctx]), torch.arange(len(ctx))[None])[0, -1]
        token = int(logits.argmax())
        if token == EOS:
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace") + "<eos>"
        ids.append(token)
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@torch.no_grad()
def val_loss(model: TinyGPT, stream: Stream, block: int) -> float:
    x, y, pos = batch([stream], [1.0], 16, block, random.Random(0))
    return float(F.cross_entropy(model(x, pos).reshape(-1, VOCAB), y.reshape(-1)))


REFERENCE_PROMPT = render_chat([("user", "What does json.dumps do?")])
DEMO_QUESTIONS = [
    "What does json.dumps do?",
    "What does os.path.join do?",
    "Explain math.sqrt.",
    "What is re.compile?",
    "Tell me about the collections module.",
    "Hello",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--chat-share", type=float, default=0.5, help="share of chat windows")
    ap.add_argument("--chats-per-entry", type=int, default=4)
    ap.add_argument("--popular-weight", type=int, default=4, help="more chats for familiar modules")
    ap.add_argument("--init", type=Path, default=None, help="warm-start from these weights")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--reference-out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    docs = build_corpus()
    random.Random(0).shuffle(docs)
    split = int(len(docs) * 0.98)
    plain, plain_val = encode(docs[:split], 0.0), encode(docs[split:], 0.0)
    entries = chat_entries()
    # about 2% of the objects, by a stable hash of the name, are only asked about in validation
    held_out = [e for e in entries if zlib.crc32(e.name.encode()) % 50 == 0]
    asked = [e for e in entries if zlib.crc32(e.name.encode()) % 50 != 0]
    chat = encode(build_chats(asked, args.chats_per_entry, args.popular_weight, args.seed), 0.5)
    chat_val = encode(build_chats(held_out, 2, 1, args.seed + 1), 0.5)
    print(
        f"corpus: {len(docs):,} docs, {len(plain.data) + len(plain_val.data):,} bytes; "
        f"chats about {len(asked):,} objects ({len(held_out)} held out): "
        f"{len(chat.starts):,} chats, {len(chat.data):,} bytes",
        flush=True,
    )

    model = TinyGPT()
    if args.init is not None:
        with np.load(args.init) as npz, torch.no_grad():
            for name in model.names:
                model.w(name).copy_(torch.from_numpy(npz[name]))
    decay = [p for n, p in model.params.items() if p.dim() == 2]
    no_decay = [p for n, p in model.params.items() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    shares = [1.0 - args.chat_share, args.chat_share]
    budget = args.minutes * 60
    start, step = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < budget:
        frac = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y, pos = batch([plain, chat], shares, args.batch, args.block, rng)
        loss = F.cross_entropy(model(x, pos).reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            print(
                f"step {step} {elapsed / 60:.1f} min lr {lr:.2e} loss {loss.item():.3f} "
                f"val plain {val_loss(model, plain_val, args.block):.3f} "
                f"chat {val_loss(model, chat_val, args.block):.3f}",
                flush=True,
            )
        if step % 1000 == 0:
            print(repr(sample(model, render_chat([("user", DEMO_QUESTIONS[step // 1000 % 6])]), 160)))

    model.eval()
    print(
        f"final after {step} steps, {(time.monotonic() - start) / 60:.1f} min: "
        f"val plain {val_loss(model, plain_val, args.block):.3f} "
        f"chat {val_loss(model, chat_val, args.block):.3f}",
        flush=True,
    )
    for prompt in ["Return the", "This module provides"]:
        print(repr(sample(model, prompt, 200)), flush=True)
    for question in DEMO_QUESTIONS + [_question(e, random.Random(0)) for e in held_out[:5]]:
        print(repr(sample(model, render_chat([("user", question)]), 200)), flush=True)
    weights = {n: model.w(n).detach().numpy().astype(np.float32) for n in model.names}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez(tmp, **weights)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) after {step} steps", flush=True)
    if args.reference_out is not None:
        ids = list(REFERENCE_PROMPT.encode("utf-8"))
        with torch.no_grad():
            logits = model(torch.tensor([ids]), torch.arange(len(ids))[None])[0].numpy()
        np.savez(args.reference_out, ids=np.array(ids, np.int64), logits=logits)


if __name__ == "__main__":
    main()
