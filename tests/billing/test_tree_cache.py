"""The in-memory tile cache answers exactly as billing.merkle does over the full leaf list."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.billing.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)
from infermeter.billing.tree_cache import TreeCache

LEAVES = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(300)]


@st.composite
def trees(draw: st.DrawFn) -> tuple[TreeCache, int]:
    """A cache of n leaves, filled in random chunks, with a small random tile width."""
    tile = draw(st.sampled_from([2, 4, 8, 16]))
    n = draw(st.integers(min_value=1, max_value=len(LEAVES)))
    cache = TreeCache(tile)
    at = 0
    while at < n:
        step = draw(st.integers(min_value=1, max_value=n - at))
        cache.extend(LEAVES[at : at + step])
        at += step
    return cache, n


@settings(max_examples=150, deadline=None)
@given(tree=trees(), data=st.data())
def test_roots_and_proofs_equal_the_full_computation(
    tree: tuple[TreeCache, int], data: st.DataObject
) -> None:
    """root, inclusion and consistency equal merkle.py's on leaves[:size], for any sizes."""
    cache, n = tree
    size = data.draw(st.integers(min_value=1, max_value=n))
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    first = data.draw(st.integers(min_value=0, max_value=size))
    leaves = LEAVES[:size]
    assert cache.root(size) == merkle_root(leaves)
    assert cache.inclusion(index, size) == inclusion_proof(index, leaves)
    assert cache.consistency(first, size) == consistency_proof(first, leaves)
    assert cache.leaf(index) == leaves[index]


def test_every_pair_of_small_sizes_verifies() -> None:
    """Exhaustively for 40 leaves and tile 4: every proof the cache makes verifies."""
    cache = TreeCache(4)
    cache.extend(LEAVES[:40])
    for n in range(1, 41):
        root = cache.root(n)
        for i in range(n):
            assert verify_inclusion(LEAVES[i], i, n, cache.inclusion(i, n), root)
        for m in range(n + 1):
            assert verify_consistency(m, n, cache.root(m), root, cache.consistency(m, n))


def test_empty_tree_and_limits() -> None:
    """The empty tree has the empty root; sizes beyond the cache and bad leaves are refused."""
    cache = TreeCache()
    assert cache.size == 0 and cache.root(0) == EMPTY_ROOT
    cache.extend(LEAVES[:3])
    with pytest.raises(ValueError, match="beyond the 3 leaves"):
        cache.root(4)
    with pytest.raises(ValueError, match="outside a tree of 3"):
        cache.inclusion(3, 3)
    with pytest.raises(ValueError, match="between 0 and the second"):
        cache.consistency(3, 2)
    with pytest.raises(ValueError, match="32 bytes"):
        cache.extend([b"short"])
    with pytest.raises(ValueError, match="power of two"):
        TreeCache(12)
