"""C2SP checkpoints (c2sp.org/tlog-checkpoint): a log's size and root as a signed note's text.

    <origin>\\n
    <tree size, decimal, no leading zeros>\\n
    <root hash, standard base64 with padding>\\n
    [<extension line>\\n ...]

The text is then signed as a signed note (``billing.signed_note``) by the log's key, whose
name is the origin. Pure functions only.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from infermeter.billing.signed_note import NoteError

HASH = 32


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A checkpoint's body: the log's origin, its tree size and root hash."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        if not self.origin or any(c in self.origin for c in "\n\r") or not self.origin.isprintable():
            raise NoteError(f"origin {self.origin!r} must be one printable line")
        if self.size < 0 or len(self.root) != HASH:
            raise NoteError(f"tree size {self.size} must be >= 0 and the root 32 bytes")
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(f"{line}\n" for line in lines)


def parse_checkpoint(text: str) -> TreeHead:
    """The tree head a checkpoint's text states; NoteError naming the bad line."""
    if not text.endswith("\n"):
        raise NoteError("a checkpoint's text ends with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError(
            f"a checkpoint has an origin, a size and a root line; this one has {len(lines)} lines"
        )
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise NoteError("the checkpoint's first line, its origin, is empty")
    if not size_text.isdigit() or not size_text.isascii() or (size_text != "0" and size_text[0] == "0"):
        raise NoteError(f"the checkpoint's tree size {size_text!r} is not a decimal without leading zeros")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"the checkpoint's root hash {root_text!r} is not base64") from None
    if len(root) != HASH or base64.b64encode(root).decode() != root_text:
        raise NoteError(f"the checkpoint's root hash {root_text!r} is not 32 bytes in canonical base64")
    if any(not e for e in extensions):
        raise NoteError("a checkpoint's extension lines must not be empty")
    return TreeHead(origin, int(size_text), root, tuple(extensions))


__all__ = ["TreeHead", "parse_checkpoint"]
