"""The RFC 9162 (Certificate Transparency v2) Merkle tree over the ledger's leaf hashes.

Pure functions over lists of 32-byte leaf hashes (``ledger.leaf_hash``: SHA-256(0x00‖entry)):

    MTH({})   = SHA-256()                                  the empty tree
    MTH({d})  = the leaf hash itself
    MTH(D[n]) = SHA-256(0x01 ‖ MTH(D[0:k]) ‖ MTH(D[k:n]))  k = largest power of 2 < n

Inclusion proofs (§2.1.3) show that a leaf sits at an index of a tree with a given root;
consistency proofs (§2.1.4) show that a tree of size m is a prefix of a tree of size n,
i.e. that nothing before m was changed, removed or reordered. Proof lists run from the leaf
(or the smaller tree) up to the root, as in the RFC. Generation is the RFC's recursive
definition, O(n) hashing per call; verification is §2.1.3.2 and §2.1.4.2 step by step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """An interior node: SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    if hi - lo == 1:
        return leaves[lo]
    k = _split(hi - lo)
    return node_hash(_mth(leaves, lo, lo + k), _mth(leaves, lo + k, hi))


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over ``leaf_hashes`` (the empty tree's root is SHA-256 of nothing)."""
    return EMPTY_ROOT if not leaf_hashes else _mth(leaf_hashes, 0, len(leaf_hashes))


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 §2.1.3.1: the sibling hashes from the leaf up."""
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} is outside a tree of {n} leaves; pass 0 <= index < {n}")
    path: list[bytes] = []
    lo, hi, m = 0, n, index
    while hi - lo > 1:  # walk down from the root, collecting siblings, then reverse
        k = _split(hi - lo)
        if m < k:
            path.append(_mth(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            path.append(_mth(leaf_hashes, lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: whether ``leaf_hash`` is leaf ``index`` of the tree with ``root``."""
    if not 0 <= index < tree_size or any(len(p) != 32 for p in proof):
        return False
    fn, sn, r = index, tree_size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def consistency_proof(m: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 §2.1.4.1; empty when m is 0 or n (nothing to prove)."""
    n = len(leaf_hashes)
    if not 0 <= m <= n:
        raise ValueError(
            f"first tree size {m} must be between 0 and the tree's size {n}; "
            "a consistency proof goes from an older (smaller) tree to a newer one"
        )
    if m in (0, n):
        return []
    return _subproof(m, leaf_hashes, 0, n, True)


def _subproof(m: int, leaves: Sequence[bytes], lo: int, hi: int, whole: bool) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if whole else [_mth(leaves, lo, hi)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves, lo, lo + k, whole), _mth(leaves, lo + k, hi)]
    return [*_subproof(m - k, leaves, lo + k, hi, False), _mth(leaves, lo, lo + k)]


def verify_consistency(m: int, n: int, root_m: bytes, root_n: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: whether the tree of size ``m`` is a prefix of the one of size ``n``.

    The RFC's algorithm covers 0 < m < n. At the edges nothing is left to prove, so the
    proof must be empty: for m == n the roots must be equal; for m == 0 ``root_m`` must be
    the empty tree's root (every tree extends the empty one).
    """
    if not 0 <= m <= n or any(len(p) != 32 for p in proof):
        return False
    if m == 0:
        return not proof and root_m == EMPTY_ROOT
    if m == n:
        return not proof and root_m == root_n
    if not proof:  # step 1
        return False
    path = [root_m, *proof] if m & (m - 1) == 0 else list(proof)  # step 2
    fn, sn = m - 1, n - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root_m and sr == root_n and sn == 0  # step 7
