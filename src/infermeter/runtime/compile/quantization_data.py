"""Calibration text for INT8 builds: the project's own docstrings, or a user file.

The default set is every module docstring of the installed ``infermeter`` package, read
with ``ast`` (nothing is imported), split into paragraphs, in path order: deterministic for
a given version, offline, and English prose with code words, like the prompts the built-in
model serves. A user file is UTF-8 text with samples separated by blank lines, or JSON
Lines with a ``"text"`` field per line.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import infermeter

MIN_CHARS = 40  # shorter paragraphs (headings, one-liners) calibrate little


def default_texts() -> list[str]:
    """Paragraphs of infermeter's module docstrings, in path order."""
    root = Path(infermeter.__file__).resolve().parent
    texts: list[str] = []
    for path in sorted(root.rglob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        if doc:
            texts += _paragraphs(doc)
    return texts


def read_texts(path: Path) -> list[str]:
    """Samples from a user calibration file; ValueError naming the file if it has none."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read calibration file {path}: {exc}; give a UTF-8 text file") from exc
    if Path(path).suffix == ".jsonl":
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f'calibration file {path} line {n} is not a JSON object with a "text" '
                    "field; fix the line or use a plain text file"
                ) from exc
    else:
        texts = _paragraphs(raw, min_chars=1)
    if not texts:
        raise ValueError(f"calibration file {path} holds no text; add a few paragraphs")
    return texts


def texts_sha256(texts: list[str]) -> str:
    """A fingerprint of a calibration set, for the engine's metadata."""
    return hashlib.sha256("\n\n".join(texts).encode("utf-8")).hexdigest()


def _paragraphs(text: str, min_chars: int = MIN_CHARS) -> list[str]:
    chunks = (" ".join(p.split()) for p in text.split("\n\n"))
    return [c for c in chunks if len(c) >= min_chars]


__all__ = ["default_texts", "read_texts", "texts_sha256"]
