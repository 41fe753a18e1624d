"""The ledger's Ed25519 signing keys, kept in ``<home>/keys`` with owner-only permissions.

Layout (the directory is 0700):

    keys/ledger-<key_id>.pem   the private key, PKCS#8 PEM, mode 0600
    keys/ledger-<key_id>.pub   its public key, SubjectPublicKeyInfo PEM (shareable)
    keys/active                the id of the key that signs new checkpoints

``key_id`` is the first 16 hex digits of SHA-256 over the raw 32-byte public key, so anyone
holding a public key can tell which checkpoints it signed. The first key is made on first
use. ``rotate`` makes a new active key; older keys keep their ``.pub`` file and stay listed,
so checkpoints they signed stay verifiable. To retire a compromised key, delete its
``.pem`` (never its ``.pub``). ``active`` reads the ``active`` file each time, so a rotation
made by the CLI reaches a running server at its next checkpoint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from infermeter.core.errors import ConfigError

ALGORITHM = "Ed25519"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def key_id_of(public_key: bytes) -> str:
    """The id of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(*_RAW)


def public_pem(public_key: bytes) -> str:
    """SubjectPublicKeyInfo PEM of a raw public key (what ``openssl pkey -pubin`` reads)."""
    key = Ed25519PublicKey.from_public_bytes(public_key)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_bytes(serialization.Encoding.PEM, spki).decode()


def load_public_pem(text: str | bytes) -> bytes:
    """The raw public key in a PEM file; ConfigError when it is not an Ed25519 public key."""
    data = text.encode() if isinstance(text, str) else text
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(
            f"not a PEM public key ({exc}); pass the ledger-<key_id>.pub file or "
            "the JSON of GET /v1/ledger/key"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"the PEM key is {type(key).__name__}, not Ed25519; pass the ledger's key")
    return raw_public(key)


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` (pure)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class PublicKeyInfo:
    key_id: str
    public_key: bytes  # raw 32 bytes
    active: bool
    can_sign: bool  # its private key is still on disk


def key_document(keys: Iterable[PublicKeyInfo]) -> dict[str, Any]:
    """The JSON of ``GET /v1/ledger/key``: the active key's id and every public key."""
    listed = [
        {
            "key_id": k.key_id,
            "algorithm": ALGORITHM,
            "active": k.active,
            "public_key": base64.b64encode(k.public_key).decode(),
            "public_key_pem": public_pem(k.public_key),
        }
        for k in keys
    ]
    active = next((k["key_id"] for k in listed if k["active"]), None)
    return {"object": "ledger.keys", "active_key_id": active, "keys": listed}


def keys_from_document(doc: Any) -> dict[str, bytes]:
    """Key id → raw public key from ``key_document``'s JSON; ConfigError naming what is wrong."""
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ConfigError('the key document has no "keys" list; save GET /v1/ledger/key as it is')
    out: dict[str, bytes] = {}
    for item in keys:
        try:
            raw = base64.b64decode(item["public_key"], validate=True)
            key_id = item["key_id"]
        except (KeyError, TypeError, binascii.Error, ValueError):
            raise ConfigError(f"key entry {item!r} lacks a base64 public_key or a key_id") from None
        if len(raw) != 32 or key_id_of(raw) != key_id:
            raise ConfigError(
                f"key {key_id!r} does not match its public key (id {key_id_of(raw)}); "
                "fetch GET /v1/ledger/key again"
            )
        out[key_id] = raw
    return out


class LedgerKeys:
    """The key directory. Safe across threads and processes (files are created exclusively)."""

    def __init__(self, directory: Path | str, *, create: bool = True) -> None:
        """Open the key directory; with ``create``, make it and the first key when missing.

        Without ``create`` (for verifying), a missing directory holds no keys.
        """
        self.dir = Path(directory)
        if create and not (self.dir / "active").exists():
            self._create(first=True)

    def active_id(self) -> str:
        path = self.dir / "active"
        if not path.exists():
            raise ConfigError(
                f"{self.dir} holds no active ledger key; start the server once, or run "
                "`infermeter ledger rotate-key` to make one"
            )
        text = path.read_text().strip()
        if not (self.dir / f"ledger-{text}.pub").exists():
            raise ConfigError(
                f"{self.dir / 'active'} names key {text!r} but {self.dir} has no "
                f"ledger-{text}.pub; restore it, or run `infermeter ledger rotate-key`"
            )
        return text

    def rotate(self) -> str:
        """Make a new key and make it the active one; return its id. Old keys stay listed."""
        return self._create(first=False)

    def active(self) -> tuple[str, Ed25519PrivateKey]:
        """The active key's id and private key (read from disk each call: rotation is live)."""
        key_id = self.active_id()
        return key_id, self._private(key_id)

    def public_keys(self) -> dict[str, bytes]:
        """Every key id (active and previous) → its raw public key."""
        return {info.key_id: info.public_key for info in self.list()}

    def list(self) -> list[PublicKeyInfo]:
        """Every key, oldest first (by file time, then id)."""
        active = self.active_id() if (self.dir / "active").exists() else None
        files = sorted(self.dir.glob("ledger-*.pub"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        out: list[PublicKeyInfo] = []
        for path in files:
            key_id = path.stem.removeprefix("ledger-")
            raw = load_public_pem(path.read_bytes())
            if key_id_of(raw) != key_id:
                raise ConfigError(
                    f"{path} holds key {key_id_of(raw)}, not {key_id}; restore the "
                    "file (a key file's name is its id)"
                )
            can_sign = (self.dir / f"ledger-{key_id}.pem").exists()
            out.append(PublicKeyInfo(key_id, raw, key_id == active, can_sign))
        return out

    # internals ------------------------------------------------------------------------------
    def _private(self, key_id: str) -> Ed25519PrivateKey:
        path = self.dir / f"ledger-{key_id}.pem"
        if not path.exists():
            raise ConfigError(
                f"the active ledger key {key_id} has no private key {path}; "
                "make a new one with `infermeter ledger rotate-key`"
            )
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path} is readable by others (mode {mode:04o}); a signing key must "
                f"be owner-only: run chmod 600 {path}"
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 private key; restore it or rotate the key")
        return key

    def _create(self, *, first: bool) -> str:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # mkdir's mode is masked by the umask
        key = Ed25519PrivateKey.generate()
        raw = raw_public(key.public_key())
        key_id = key_id_of(raw)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_new(self.dir / f"ledger-{key_id}.pem", pem, 0o600)
        _write_new(self.dir / f"ledger-{key_id}.pub", public_pem(raw).encode(), 0o644)
        if first:
            try:  # another process may make the first key at the same moment: first one wins
                _write_new(self.dir / "active", f"{key_id}\n".encode(), 0o644)
            except FileExistsError:
                pass
            return self.active_id()
        tmp = self.dir / f"active.{key_id}.tmp"
        _write_new(tmp, f"{key_id}\n".encode(), 0o644)
        os.replace(tmp, self.dir / "active")
        return key_id


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (never briefly world-readable); fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, mode)  # os.open's mode is masked by the umask


__all__ = [
    "ALGORITHM",
    "LedgerKeys",
    "PublicKeyInfo",
    "key_document",
    "key_id_of",
    "keys_from_document",
    "load_public_pem",
    "public_pem",
    "raw_public",
    "verify_signature",
]
