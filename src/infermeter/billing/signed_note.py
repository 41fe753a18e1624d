"""C2SP signed notes (c2sp.org/signed-note): a text and the signature lines under it.

A note is its text (UTF-8, ending in a newline; it may hold empty lines), a blank line, then
one or more signature lines; the text ends at the note's *last* blank line::

    <text>\\n
    \\n
    — <key name> <base64(key id ‖ signature)>\\n

The dash is U+2014. No part of a note holds an ASCII control character (below U+0020) other
than newline. A key is named by its ``name`` (non-empty, no Unicode space, no ``+``) and a
4-byte key id, the first four bytes of SHA-256(name ‖ 0x0A ‖ type ‖ public key). Two key
types are implemented:

- ``0x01`` Ed25519: the signature is Ed25519 over the note's text;
- ``0x04`` tlog-cosignature/v1 (c2sp.org/tlog-cosignature): the signature field is an 8-byte
  big-endian Unix time (at most 2^63 - 1) followed by Ed25519 over
  ``cosignature/v1\\ntime <t>\\n`` ‖ text.

A verifier key is written ``<name>+<key id as 8 lowercase hex digits>+<base64(type ‖ public
key)>``. Base64 is accepted only in its canonical spelling (RFC 4648 §3.5 lets a decoder
refuse non-zero padding bits), so every note has one encoding.
Signatures by keys a verifier does not know are ignored, never an error. Pure functions only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infermeter.billing.signing import raw_public, verify_signature

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
DASH = "\u2014"
MAX_SIGNATURES = 100  # signed-note: at least 16 must be accepted; Go's sumdb/note stops at 100
MAX_TIMESTAMP = 2**63 - 1  # tlog-cosignature: a cosignature's time never exceeds it


class NoteError(ValueError):
    """A note, a signature line or a verifier key that is not well formed."""


def key_id(name: str, key_type: int, public_key: bytes) -> bytes:
    """The 4-byte key id: SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([key_type]) + public_key).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" or ord(c) < 0x20 for c in name):
        raise NoteError(f"key name {name!r} must be non-empty, without spaces, control characters or '+'")


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A public key as signed notes name it."""

    name: str
    key_type: int
    public_key: bytes  # raw 32-byte Ed25519 key

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.key_type, self.public_key)

    def text(self) -> str:
        """``name+hexid+base64(type ‖ key)``."""
        blob = base64.b64encode(bytes([self.key_type]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse ``name+hexid+base64``; NoteError naming what is wrong."""
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError(f"verifier key {text!r} is not name+keyid+base64(type||key)")
        name, hex_id, blob = parts
        _check_name(name)
        raw = b64(blob, f"verifier key {text!r}: the key")
        if len(hex_id) != 8 or any(c not in "0123456789abcdef" for c in hex_id):
            raise NoteError(f"verifier key {text!r}: the key id {hex_id!r} must be 8 lowercase hex digits")
        stated = bytes.fromhex(hex_id)
        if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_V1):
            raise NoteError(
                f"verifier key {text!r}: expected an 8-hex-digit id and 33 bytes of key "
                "(type 0x01 Ed25519 or 0x04 cosignature/v1, then the 32-byte public key)"
            )
        key = cls(name, raw[0], raw[1:])
        if key.key_id != stated:
            raise NoteError(f"verifier key {text!r}: its id should be {key.key_id.hex()}, not {hex_id}")
        return key


def verifier_for(name: str, private_key: Ed25519PrivateKey, key_type: int = ED25519) -> VerifierKey:
    _check_name(name)
    return VerifierKey(name, key_type, raw_public(private_key.public_key()))


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes  # for type 0x04: 8-byte time ‖ 64-byte signature

    def line(self) -> str:
        return f"{DASH} {self.name} {base64.b64encode(self.key_id + self.signature).decode()}\n"


@dataclass(frozen=True, slots=True)
class Note:
    text: str  # ends with a newline
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> bytes:
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode()

    def with_signatures(self, extra: Iterable[NoteSignature]) -> Note:
        """This note with ``extra`` added (a signature already present is not repeated)."""
        have = list(self.signatures)
        for s in extra:
            if s not in have:
                have.append(s)
        return Note(self.text, tuple(have))


def b64(text: str, what: str) -> bytes:
    """Strict standard base64: only the one canonical spelling of the bytes is accepted."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not base64") from None
    if base64.b64encode(data).decode() != text:
        raise NoteError(f"{what} is not canonical base64 (its padding bits are not zero)")
    return data


def _check_controls(text: str) -> None:
    for at, c in enumerate(text):
        if ord(c) < 0x20 and c != "\n":
            raise NoteError(
                f"a note holds the control character U+{ord(c):04X} at {at}; only newline is allowed"
            )


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text ends with a newline")
    _check_controls(text)


def cosigned_message(text: str, timestamp: int) -> bytes:
    """What a tlog-cosignature/v1 signature covers."""
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()


def sign(text: str, name: str, private_key: Ed25519PrivateKey) -> NoteSignature:
    """An Ed25519 (type 0x01) signature of ``text`` by the key ``name``."""
    _check_text(text)
    vkey = verifier_for(name, private_key)
    return NoteSignature(name, vkey.key_id, private_key.sign(text.encode()))


def cosign(text: str, name: str, private_key: Ed25519PrivateKey, timestamp: int) -> NoteSignature:
    """A tlog-cosignature/v1 (type 0x04) signature of a checkpoint's ``text`` at ``timestamp``."""
    _check_text(text)
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"a cosignature's time {timestamp} must be 0..2^63-1 (POSIX seconds)")
    vkey = verifier_for(name, private_key, COSIGNATURE_V1)
    sig = private_key.sign(cosigned_message(text, timestamp))
    return NoteSignature(name, vkey.key_id, struct.pack(">Q", timestamp) + sig)


def parse(data: bytes | str) -> Note:
    """Split a note into text and signatures; NoteError when it is not well formed."""
    try:
        msg = data.decode() if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise NoteError("a note must be UTF-8") from None
    _check_controls(msg)
    split = msg.rfind("\n\n")
    if split < 0:
        raise NoteError("a note is its text, a blank line, then signature lines; no blank line found")
    text, rest = msg[: split + 1], msg[split + 2 :]
    if not rest.endswith("\n"):
        raise NoteError("a note ends with a newline after its last signature line")
    signatures: list[NoteSignature] = []
    for line in rest[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != DASH:
            raise NoteError(f"signature line {line!r} is not '{DASH} <name> <base64>'")
        _check_name(parts[1])
        blob = b64(parts[2], f"signature line {line!r}: the signature")
        if len(blob) < 5:
            raise NoteError(f"signature line {line!r}: too short for a key id and a signature")
        signatures.append(NoteSignature(parts[1], blob[:4], blob[4:]))
    if not signatures or len(signatures) > MAX_SIGNATURES:
        raise NoteError(f"a note has 1 to {MAX_SIGNATURES} signature lines, this one {len(signatures)}")
    return Note(text, tuple(signatures))


def signature_valid(text: str, sig: NoteSignature, key: VerifierKey) -> bool:
    """Whether ``sig`` is ``key``'s valid signature of ``text``."""
    if sig.name != key.name or sig.key_id != key.key_id:
        return False
    if key.key_type == ED25519:
        return len(sig.signature) == 64 and verify_signature(key.public_key, sig.signature, text.encode())
    if len(sig.signature) != 72:
        return False
    (when,) = struct.unpack(">Q", sig.signature[:8])
    if when > MAX_TIMESTAMP:
        return False
    return verify_signature(key.public_key, sig.signature[8:], cosigned_message(text, when))


def cosignature_time(sig: NoteSignature) -> int | None:
    """The Unix time a tlog-cosignature/v1 signature states (None for another shape)."""
    return struct.unpack(">Q", sig.signature[:8])[0] if len(sig.signature) == 72 else None


def verified_by(note: Note, keys: Sequence[VerifierKey]) -> list[VerifierKey]:
    """The keys among ``keys`` that validly signed ``note`` (each at most once).

    A signature whose name and id match a key but does not verify is an error (NoteError):
    the note was altered, or the signature forged.
    """
    found: list[VerifierKey] = []
    for key in keys:
        for sig in note.signatures:
            if sig.name == key.name and sig.key_id == key.key_id:
                if not signature_valid(note.text, sig, key):
                    raise NoteError(
                        f"the signature by {key.name} (key {key.key_id.hex()}) does not verify: "
                        "the note was changed after it was signed"
                    )
                if key not in found:
                    found.append(key)
    return found


__all__ = [
    "COSIGNATURE_V1",
    "DASH",
    "ED25519",
    "MAX_TIMESTAMP",
    "Note",
    "NoteError",
    "NoteSignature",
    "VerifierKey",
    "cosign",
    "cosignature_time",
    "cosigned_message",
    "key_id",
    "parse",
    "sign",
    "signature_valid",
    "verified_by",
    "verifier_for",
]
