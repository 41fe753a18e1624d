"""The RFC 9162 Merkle tree: known answers, and every proof verifies and every altered one fails."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.billing.ledger import leaf_hash
from infermeter.billing.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    merkle_root,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from infermeter.billing.sqlite_store import SqliteStore

from .ledger_records import make_record

# The RFC 6962 test vectors shipped with the certificate-transparency reference code.
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
             bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]  # fmt: skip
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_CONSISTENCY = {
    (1, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
    (2, 5): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"],
}  # fmt: skip
CT_INCLUSION = {
    (0, 8): CT_CONSISTENCY[(1, 8)],
    (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}  # fmt: skip
CT_HASHES = [leaf_hash(d) for d in CT_LEAVES]


def leaves(n: int, salt: int = 0) -> list[bytes]:
    return [hashlib.sha256(b"\x00" + f"{salt}/{i}".encode()).digest() for i in range(n)]


def altered(proof: list[bytes], at: int, bit: int) -> list[bytes]:
    """``proof`` with one bit of one hash flipped."""
    out = list(proof)
    h = bytearray(out[at])
    h[bit // 8] ^= 1 << (bit % 8)
    out[at] = bytes(h)
    return out


def test_roots_match_the_rfc6962_vectors() -> None:
    """MTH of the reference leaves equals the published root for every size 0..8."""
    assert (
        merkle_root([])
        == EMPTY_ROOT
        == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    )
    for n, root in enumerate(CT_ROOTS, start=1):
        assert merkle_root(CT_HASHES[:n]).hex() == root


def test_proofs_match_the_rfc6962_vectors() -> None:
    """Inclusion and consistency proofs equal the published ones and verify."""
    for (index, n), expected in CT_INCLUSION.items():
        proof = inclusion_proof(index, CT_HASHES[:n])
        assert [p.hex() for p in proof] == expected
        assert verify_inclusion(CT_HASHES[index], index, n, proof, bytes.fromhex(CT_ROOTS[n - 1]))
    for (m, n), expected in CT_CONSISTENCY.items():
        proof = consistency_proof(m, CT_HASHES[:n])
        assert [p.hex() for p in proof] == expected
        roots = bytes.fromhex(CT_ROOTS[m - 1]), bytes.fromhex(CT_ROOTS[n - 1])
        assert verify_consistency(m, n, *roots, proof)


def test_a_node_is_sha256_of_0x01_left_right() -> None:
    """Interior nodes use RFC 9162's 0x01 prefix."""
    a, b = leaves(2)
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest() == merkle_root([a, b])


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=70).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(min_value=0, max_value=n - 1))))  # fmt: skip
def test_every_inclusion_proof_verifies(case: tuple[int, int]) -> None:
    """For any tree size and index, the proof verifies against the root."""
    n, index = case
    tree = leaves(n)
    proof = inclusion_proof(index, tree)
    assert verify_inclusion(tree[index], index, n, proof, merkle_root(tree))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=2, max_value=70).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(min_value=0, max_value=n - 1), st.data())))  # fmt: skip
def test_every_altered_inclusion_proof_fails(case: tuple[int, int, st.DataObject]) -> None:
    """A flipped bit, a dropped or extra hash, another leaf, index or root: all fail."""
    n, index, data = case
    tree = leaves(n)
    root, proof = merkle_root(tree), inclusion_proof(index, tree)
    at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=255))
    other = data.draw(st.integers(min_value=0, max_value=n - 1).filter(lambda i: i != index))
    assert not verify_inclusion(tree[index], index, n, altered(proof, at, bit), root)
    assert not verify_inclusion(tree[index], index, n, proof[:-1], root)
    assert not verify_inclusion(tree[index], index, n, [*proof, proof[0]], root)
    assert not verify_inclusion(tree[other], index, n, proof, root)
    assert not verify_inclusion(tree[index], other, n, proof, root)
    assert not verify_inclusion(tree[index], index, n, proof, merkle_root(leaves(n, salt=1)))
    assert not verify_inclusion(tree[index], n, n, proof, root)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=70).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(min_value=0, max_value=n))))  # fmt: skip
def test_every_consistency_proof_verifies(case: tuple[int, int]) -> None:
    """For any m <= n, the proof shows the first m leaves' tree is a prefix of the n-leaf one."""
    n, m = case
    tree = leaves(n)
    proof = consistency_proof(m, tree)
    assert verify_consistency(m, n, merkle_root(tree[:m]), merkle_root(tree), proof)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=2, max_value=70).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(min_value=1, max_value=n - 1), st.data())))  # fmt: skip
def test_every_altered_consistency_proof_fails(case: tuple[int, int, st.DataObject]) -> None:
    """A flipped bit, a dropped or extra hash, or a rewritten history: all fail."""
    n, m, data = case
    tree = leaves(n)
    old, new = merkle_root(tree[:m]), merkle_root(tree)
    proof = consistency_proof(m, tree)
    at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=255))
    assert not verify_consistency(m, n, old, new, altered(proof, at, bit))
    assert not verify_consistency(m, n, old, new, proof[:-1])
    assert not verify_consistency(m, n, old, new, [*proof, proof[0]])
    assert not verify_consistency(m, n, new, old, proof)
    changed = list(tree)
    changed[data.draw(st.integers(min_value=0, max_value=m - 1))] = leaves(1, salt=2)[0]
    assert not verify_consistency(m, n, merkle_root(changed[:m]), new, proof)
    assert not verify_consistency(m, n, old, merkle_root(changed), proof)


def test_edges_of_consistency() -> None:
    """m == 0 or m == n needs an empty proof; m > n, or a non-empty edge proof, fails."""
    tree = leaves(5)
    root = merkle_root(tree)
    assert consistency_proof(0, tree) == [] == consistency_proof(5, tree)
    assert verify_consistency(0, 5, EMPTY_ROOT, root, [])
    assert verify_consistency(5, 5, root, root, [])
    assert not verify_consistency(5, 5, root, merkle_root(tree[:4]), [])
    assert not verify_consistency(0, 5, root, root, [])
    assert not verify_consistency(5, 5, root, root, [root])
    assert not verify_consistency(6, 5, root, root, [root])
    with pytest.raises(ValueError, match="between 0"):
        consistency_proof(6, tree)
    with pytest.raises(ValueError, match="outside"):
        inclusion_proof(5, tree)


def test_the_store_leaf_hashes_form_the_tree_of_its_entries(tmp_path: Path) -> None:
    """store.leaf_hashes() are SHA-256(0x00‖payload) in seq order; a record's proof verifies."""
    with SqliteStore(tmp_path / "im.db") as store:
        results = store.append([make_record(i) for i in range(7)])
        hashes = store.leaf_hashes()
        payloads = [
            p for (p,) in sqlite3.connect(store.path).execute("SELECT payload FROM ledger ORDER BY seq")
        ]
        assert hashes == [leaf_hash(p.encode()) for p in payloads]
        assert store.leaf_hashes(3) == hashes[:3]
        seq = results[4].seq
        proof = inclusion_proof(seq, hashes)
        assert verify_inclusion(hashes[seq], seq, 7, proof, merkle_root(hashes))
        store.append([make_record(7)])
        grown = store.leaf_hashes()
        assert verify_consistency(7, 8, merkle_root(hashes), merkle_root(grown), consistency_proof(7, grown))
