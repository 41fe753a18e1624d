"""The ledger's signing keys: made once, owner-only, rotated without losing old public keys."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from infermeter.billing.signing import (
    LedgerKeys,
    key_document,
    key_id_of,
    keys_from_document,
    load_public_pem,
    public_pem,
    verify_signature,
)
from infermeter.core.errors import ConfigError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_use_makes_one_owner_only_key(tmp_path: Path) -> None:
    """The first open makes a key: directory 0700, private key 0600; reopening keeps it."""
    keys = LedgerKeys(tmp_path / "keys")
    key_id = keys.active_id()
    assert mode(keys.dir) == 0o700
    assert mode(keys.dir / f"ledger-{key_id}.pem") == 0o600
    assert LedgerKeys(tmp_path / "keys").active_id() == key_id
    assert len(list(keys.dir.glob("ledger-*.pem"))) == 1


def test_key_id_is_the_hash_of_the_public_key(tmp_path: Path) -> None:
    """A key's id is the first 16 hex digits of SHA-256 over its raw public key."""
    keys = LedgerKeys(tmp_path / "keys")
    (info,) = keys.list()
    assert info.key_id == hashlib.sha256(info.public_key).hexdigest()[:16] == key_id_of(info.public_key)
    assert info.active and info.can_sign


def test_signatures_verify_with_the_public_key_only(tmp_path: Path) -> None:
    """What the active key signs verifies with its public key, and nothing else does."""
    keys = LedgerKeys(tmp_path / "keys")
    key_id, private = keys.active()
    signature = private.sign(b"tree head")
    public = keys.public_keys()[key_id]
    assert verify_signature(public, signature, b"tree head")
    assert not verify_signature(public, signature, b"tree heaD")
    assert not verify_signature(public, b"\x00" * 64, b"tree head")


def test_rotation_keeps_old_public_keys(tmp_path: Path) -> None:
    """rotate() makes a new active key; the old one stays listed; deleting its .pem retires it."""
    keys = LedgerKeys(tmp_path / "keys")
    old = keys.active_id()
    new = keys.rotate()
    assert new != old and keys.active_id() == new
    assert set(keys.public_keys()) == {old, new}
    os.remove(keys.dir / f"ledger-{old}.pem")
    listed = {k.key_id: k for k in keys.list()}
    assert not listed[old].can_sign and not listed[old].active and listed[new].active


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    """Signing with a group- or world-readable key fails, naming the file and the chmod fix."""
    keys = LedgerKeys(tmp_path / "keys")
    path = keys.dir / f"ledger-{keys.active_id()}.pem"
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        keys.active()


def test_verifying_never_makes_a_key(tmp_path: Path) -> None:
    """Opened with create=False, a missing directory holds no keys and none is made."""
    keys = LedgerKeys(tmp_path / "nokeys", create=False)
    assert keys.public_keys() == {}
    assert not (tmp_path / "nokeys").exists()
    with pytest.raises(ConfigError, match="no active ledger key"):
        keys.active_id()


def test_key_document_round_trips(tmp_path: Path) -> None:
    """GET /v1/ledger/key's document gives back every key; a mismatched id is refused."""
    keys = LedgerKeys(tmp_path / "keys")
    keys.rotate()
    doc = key_document(keys.list())
    assert keys_from_document(doc) == keys.public_keys()
    assert doc["active_key_id"] == keys.active_id()
    doc["keys"][0]["key_id"] = "0" * 16
    with pytest.raises(ConfigError, match="does not match"):
        keys_from_document(doc)
    with pytest.raises(ConfigError, match="keys"):
        keys_from_document({"nothing": 1})


def test_pem_round_trip(tmp_path: Path) -> None:
    """A .pub file is a standard SubjectPublicKeyInfo PEM of the raw key."""
    keys = LedgerKeys(tmp_path / "keys")
    key_id = keys.active_id()
    text = (keys.dir / f"ledger-{key_id}.pub").read_text()
    raw = load_public_pem(text)
    assert public_pem(raw) == text and key_id_of(raw) == key_id
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_pem("hello")
