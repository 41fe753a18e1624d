"""The ledger's Merkle tree kept in memory, so roots and proofs cost O(log n), not O(n).

``billing.merkle`` computes everything from the full list of leaves: fine for a test, but a
root over a million leaves is two million hashes. This cache keeps the leaf hashes and the
roots of complete, aligned *tiles* (``tile`` leaves at level 1, ``tile`` level-1 roots at
level 2, …), which never change once complete, and hands ``billing.merkle`` only the
handful of items one level of tiles needs. It adds no hashing rule of its own; every hash
comes from ``merkle_root``, ``inclusion_proof`` or ``consistency_proof``. Why that is exact:

- RFC 9162 splits a range of n > 1 leaves at k, the largest power of two below n. When the
  range starts on a tile boundary and n exceeds the tile width T (a power of two), k is a
  multiple of T, so every split lands on a tile boundary: the tree over the leaves *is* the
  tree over the range's tiles (and the last, partial one), each tile a single item. Hence
  MTH(leaves) = merkle_root(tile roots) and a leaf's path = its path inside its tile followed
  by the tile's path among the tiles.
- A consistency proof from m to n descends to the tile holding the boundary m and collects
  the siblings on the way, i.e. the tile's inclusion path. Inside that tile it continues as
  RFC 9162's SUBPROOF with b = false (unless the tile is the leftmost), which equals
  ``consistency_proof`` with MTH(first m items) put in front when m is a power of two.

A property test holds every answer byte-identical to ``billing.merkle`` on the full list.
Memory: 32 bytes a leaf plus about 32/(tile-1) bytes a leaf for the tiles.
"""

from __future__ import annotations

from collections.abc import Iterable

from infermeter.billing.merkle import consistency_proof, inclusion_proof, merkle_root

HASH = 32


class TreeCache:
    """Leaf hashes and complete tile roots. Not thread-safe: callers hold their own lock.

    Pure apart from its own memory: no clock, file or thread. ``tile`` is a power of two
    (16 keeps each level's work at fifteen hashes or fewer).
    """

    def __init__(self, tile: int = 16) -> None:
        if tile < 2 or tile & (tile - 1):
            raise ValueError(f"tile={tile} must be a power of two >= 2, e.g. 16")
        self.tile = tile
        self._levels: list[bytearray] = [bytearray()]  # level 0: the leaves

    @property
    def size(self) -> int:
        """How many leaves the cache holds."""
        return len(self._levels[0]) // HASH

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append leaves (32-byte hashes, in ledger order) and close every tile they complete."""
        leaves = self._levels[0]
        for leaf in leaf_hashes:
            if len(leaf) != HASH:
                raise ValueError(f"a leaf hash is 32 bytes, got {len(leaf)}; pass ledger.leaf_hash(entry)")
            leaves += leaf
        level = 1
        while True:
            below = len(self._levels[level - 1]) // HASH
            if below < self.tile:
                return
            if level == len(self._levels):
                self._levels.append(bytearray())
            nodes = self._levels[level]
            for j in range(len(nodes) // HASH, below // self.tile):
                nodes += merkle_root(self._nodes(level - 1, j * self.tile, (j + 1) * self.tile))
            level += 1

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        self._check(index + 1, "leaf index + 1")
        return self._node(0, index)

    def root(self, size: int) -> bytes:
        """MTH of the first ``size`` leaves (size 0: the empty tree's root)."""
        self._check(size, "tree size")
        if size == 0:
            return merkle_root([])
        return merkle_root(self._items(self._top(size), 0, size))

    def inclusion(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 PATH(index, D[size]), equal to ``merkle.inclusion_proof(index, leaves[:size])``."""
        self._check(size, "tree size")
        if not 0 <= index < size:
            raise ValueError(
                f"leaf index {index} is outside a tree of {size} leaves; pass 0 <= index < {size}"
            )
        return self._path(index, 0, size, self._top(size))

    def consistency(self, first: int, second: int) -> list[bytes]:
        """RFC 9162 PROOF(first, D[second]), equal to ``merkle.consistency_proof``."""
        self._check(second, "second tree size")
        if not 0 <= first <= second:
            raise ValueError(
                f"first tree size {first} must be between 0 and the second, {second}; "
                "a consistency proof goes from an older (smaller) tree to a newer one"
            )
        if first in (0, second):
            return []
        return self._subproof(first, 0, second, self._top(second), True)

    def hashes(self, level: int, first: int, end: int) -> list[bytes]:
        """Stored nodes ``first``..``end - 1`` of ``level`` (0: leaves; l: complete tiles' roots)."""
        if level >= len(self._levels) or end > len(self._levels[level]) // HASH:
            raise ValueError(f"level {level} has no complete nodes {first}..{end - 1} yet")
        return self._nodes(level, first, end)

    # internals ------------------------------------------------------------------------------
    def _check(self, size: int, what: str) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"{what} {size} is beyond the {self.size} leaves cached; extend() first")

    def _span(self, level: int) -> int:
        return int(self.tile**level)

    def _top(self, size: int) -> int:
        """The level whose items cover ``size`` leaves in at most ``tile`` items."""
        level = 0
        while self._span(level + 1) < size:
            level += 1
        return level

    def _node(self, level: int, j: int) -> bytes:
        return bytes(self._levels[level][j * HASH : (j + 1) * HASH])

    def _nodes(self, level: int, first: int, end: int) -> list[bytes]:
        if end <= first:
            return []
        data = self._levels[level]
        return [bytes(data[j * HASH : (j + 1) * HASH]) for j in range(first, end)]

    def _items(self, level: int, lo: int, hi: int) -> list[bytes]:
        """Level-``level`` items covering leaves [lo, hi): complete tiles, then the partial one.

        ``lo`` is a multiple of the level's span and [lo, hi) lies in one tile of the level above.
        """
        span = self._span(level)
        full = hi // span
        items = self._nodes(level, lo // span, full)
        if full * span < hi:
            items.append(merkle_root(self._items(level - 1, full * span, hi)))
        return items

    def _path(self, index: int, lo: int, hi: int, level: int) -> list[bytes]:
        items = self._items(level, lo, hi)
        if level == 0:
            return inclusion_proof(index - lo, items)
        span = self._span(level)
        j = (index - lo) // span
        start = lo + j * span
        return [*self._path(index, start, min(start + span, hi), level - 1), *inclusion_proof(j, items)]

    def _subproof(self, m: int, lo: int, hi: int, level: int, whole: bool) -> list[bytes]:
        """SUBPROOF(m - lo, leaves[lo:hi], whole) of RFC 9162 §2.1.4.1, for lo < m < hi."""
        items = self._items(level, lo, hi)
        span = self._span(level)
        j, rest = divmod(m - lo, span)
        if rest == 0:
            proof = consistency_proof(j, items)
            if not whole and j & (j - 1) == 0:  # the RFC's b = false keeps MTH(D[0:j]) itself
                proof.insert(0, merkle_root(items[:j]))
            return proof
        start = lo + j * span
        inner = self._subproof(m, start, min(start + span, hi), level - 1, whole and j == 0)
        return [*inner, *inclusion_proof(j, items)]


__all__ = ["TreeCache"]
