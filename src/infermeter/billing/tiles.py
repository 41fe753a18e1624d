"""C2SP tlog-tiles: tile paths, hash tiles and entry bundles. Pure functions only.

A tree of size S is served as tiles of 256 hashes. The tile at level L, index N holds the
hashes of the tree nodes at height 8·L (each the root of a complete subtree of 256^L leaves)
numbered 256·N … 256·N + W - 1, concatenated: W·32 bytes. W is 256 for a full tile; the
rightmost tile of a level is partial while the tree has fewer nodes there, and its width W
(1…255) is part of its path. The entry bundle ``tile/entries/N`` holds the entries of the
leaves of level-0 tile N, each as a big-endian uint16 length then the entry's bytes.

Paths: ``tile/<L>/<N>[.p/<W>]`` and ``tile/entries/<N>[.p/<W>]``. N is written in groups
of three digits, zero-padded, each but the last prefixed by ``x``: 1234067 is
``x001/x234/067``, 5 is ``005``. Every number is written one way only, so a parser that
re-encodes and compares refuses every other spelling.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 256
HEIGHT = 8  # log2(WIDTH): tree levels per tile level
MAX_LEVEL = 63
MAX_ENTRY = 0xFFFF


class TilePathError(ValueError):
    """A tile path that is not the one canonical spelling of a tile."""


def encode_index(n: int) -> str:
    """N as ``x001/x234/067``."""
    if n < 0:
        raise ValueError(f"tile index {n} must be >= 0")
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


@dataclass(frozen=True, slots=True)
class TileRef:
    """One tile: ``level`` None for an entry bundle, else the hash tile level."""

    level: int | None
    index: int
    width: int = WIDTH

    @property
    def full(self) -> bool:
        return self.width == WIDTH

    def path(self) -> str:
        """The tile's path under the log's prefix, e.g. ``tile/0/x001/234.p/7``."""
        level = "entries" if self.level is None else str(self.level)
        tail = "" if self.full else f".p/{self.width}"
        return f"tile/{level}/{encode_index(self.index)}{tail}"


def parse_tile_path(path: str) -> TileRef:
    """The tile a path names; TilePathError for anything but the canonical spelling."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise TilePathError(f"{path!r} is not tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>]")
    level_text, rest = parts[1], parts[2:]
    width = WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        width_text = rest[-1]
        rest = [*rest[:-2], rest[-2][:-2]]
        if not width_text.isdigit() or not width_text.isascii() or not 1 <= int(width_text) < WIDTH:
            raise TilePathError(f"{path!r}: a partial tile's width must be 1..{WIDTH - 1}")
        width = int(width_text)
    level: int | None
    if level_text == "entries":
        level = None
    elif level_text.isdigit() and level_text.isascii() and int(level_text) <= MAX_LEVEL:
        level = int(level_text)
    else:
        raise TilePathError(f"{path!r}: the level must be 0..{MAX_LEVEL} or 'entries'")
    digits = [g.removeprefix("x") for g in rest]
    if not all(len(g) == 3 and g.isdigit() and g.isascii() for g in digits):
        raise TilePathError(f"{path!r}: the index is groups of three digits (x001/x234/067)")
    ref = TileRef(level, int("".join(digits)), width)
    if ref.path() != path:
        raise TilePathError(f"{path!r} is not the canonical path of that tile; it is {ref.path()!r}")
    return ref


def tile_width(level: int, index: int, tree_size: int) -> int:
    """How many hashes tile (``level``, ``index``) has in a tree of ``tree_size`` (0: none yet)."""
    nodes = tree_size >> (HEIGHT * level)
    return max(0, min(WIDTH, nodes - index * WIDTH))


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    out = bytearray()
    for entry in entries:
        if len(entry) > MAX_ENTRY:
            raise ValueError(f"an entry has {len(entry)} bytes; a bundle holds at most {MAX_ENTRY}")
        out += struct.pack(">H", len(entry)) + entry
    return bytes(out)


def decode_entry_bundle(data: bytes) -> list[bytes]:
    """The entries of a bundle; ValueError when a length runs past the end."""
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise ValueError(f"entry bundle ends inside a length prefix at byte {at}")
        (n,) = struct.unpack_from(">H", data, at)
        if at + 2 + n > len(data):
            raise ValueError(f"entry at byte {at} claims {n} bytes; only {len(data) - at - 2} remain")
        entries.append(data[at + 2 : at + 2 + n])
        at += 2 + n
    return entries


def split_hashes(data: bytes) -> list[bytes]:
    """A hash tile's hashes; ValueError when its length is not a multiple of 32."""
    if len(data) % 32:
        raise ValueError(f"a hash tile is a multiple of 32 bytes, got {len(data)}")
    return [data[i : i + 32] for i in range(0, len(data), 32)]


__all__ = [
    "HEIGHT",
    "WIDTH",
    "TilePathError",
    "TileRef",
    "decode_entry_bundle",
    "encode_entry_bundle",
    "encode_index",
    "parse_tile_path",
    "split_hashes",
    "tile_width",
]
