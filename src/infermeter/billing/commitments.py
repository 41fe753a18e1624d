"""Private log entries: what the public tiles carry is a salted commitment to each entry.

    commitment = SHA-256("infermeter/entry-commitment/v1\\n" ‖ salt ‖ entry)

``salt`` is 32 random bytes drawn once per entry (``new_salt``) and kept with it; ``entry``
is the ledger entry's canonical JSON, the exact bytes the ledger hashes. The public log's
tile entry is the 32-byte commitment, and its RFC 6962 leaf hash is SHA-256(0x00 ‖
commitment). The tenant's receipt carries the salt and the entry, so the tenant (and anyone
they show it to) can recompute the commitment; nobody else can.

- Hiding: the salt has 256 bits of entropy and is never published, so guessing an entry
  (however few plausible entries there are) needs the salt as well; SHA-256 modelled as a
  random oracle gives an output independent of the entry.
- Binding: opening a commitment to a different (salt, entry) is a SHA-256 collision. The
  salt has a fixed length, so the split between salt and entry is never ambiguous, and the
  domain tag keeps a commitment from being confused with any other hash of this system.
"""

from __future__ import annotations

import hashlib
import os

DOMAIN = b"infermeter/entry-commitment/v1\n"
SALT_BYTES = 32


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


def commitment(salt: bytes, entry: bytes) -> bytes:
    """The public tile entry of ``entry`` under ``salt``."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"a salt is {SALT_BYTES} bytes, got {len(salt)}")
    return hashlib.sha256(DOMAIN + salt + entry).digest()


def public_leaf(salt: bytes, entry: bytes) -> bytes:
    """The RFC 6962 leaf hash of the entry's commitment: SHA-256(0x00 ‖ commitment)."""
    return hashlib.sha256(b"\x00" + commitment(salt, entry)).digest()


__all__ = ["DOMAIN", "SALT_BYTES", "commitment", "new_salt", "public_leaf"]
