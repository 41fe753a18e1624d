"""An independent C2SP client, written from the specs, that imports nothing of infermeter.

signed-note, tlog-checkpoint, tlog-tiles, tlog-cosignature and tlog-proof, each as the spec
text describes it, with RFC 6962 hashing done here again. The tests use it to check what the
log serves; the log's own verifier is never the judge of the log.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class Invalid(Exception):
    pass


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf(entry: bytes) -> bytes:
    return sha(b"\x00" + entry)


def node(left: bytes, right: bytes) -> bytes:
    return sha(b"\x01" + left + right)


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 Merkle Tree Hash over leaf hashes."""
    if not leaves:
        return sha(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


def parse_vkey(vkey: str) -> tuple[str, bytes, int, bytes]:
    """signed-note: <name>+hex(32-bit key ID)+base64(type || key); the hex is 8 lowercase digits."""
    name, hexid, b64 = vkey.split("+", 2)
    if len(hexid) != 8 or hexid != hexid.lower():
        raise Invalid(f"key id {hexid!r} of {vkey} is not 8 lowercase hex digits")
    raw = base64.b64decode(b64, validate=True)
    if sha(name.encode() + b"\n" + raw)[:4] != bytes.fromhex(hexid):
        raise Invalid(f"key id of {vkey} does not match")
    return name, bytes.fromhex(hexid), raw[0], raw[1:]


def open_note(msg: bytes, vkeys: list[str]) -> tuple[str, list[str]]:
    """The note's text and the names of the given keys that validly signed it.

    signed-note: valid UTF-8, no control character below U+0020 but newline; the text (which
    may hold empty lines) ends at the last blank line; each signature line is em dash, space,
    name, space, base64(key id || signature). tlog-cosignature (type 0x04): the signature is
    a big-endian u64 time (at most 2^63 - 1), then Ed25519 over 'cosignature/v1', 'time T'
    and the text."""
    decoded = msg.decode()
    if any(ord(c) < 0x20 and c != "\n" for c in decoded):
        raise Invalid("a note holds a control character other than newline")
    text_b, sep, sigs = msg.rpartition(b"\n\n")
    if not sep or not sigs.endswith(b"\n"):
        raise Invalid("no blank line before the signatures, or no newline after them")
    text = (text_b + b"\n").decode()
    signed: list[str] = []
    for line in sigs.decode().split("\n")[:-1]:
        dash, name, b64 = line.split(" ")
        if dash != "\u2014":
            raise Invalid(f"bad signature line {line!r}")
        blob = base64.b64decode(b64, validate=True)
        for vkey in vkeys:
            kname, kid, ktype, pub = parse_vkey(vkey)
            if kname != name or kid != blob[:4]:
                continue
            if ktype == 0x01:
                message, sig = text.encode(), blob[4:]
            elif ktype == 0x04:
                (t,) = struct.unpack(">Q", blob[4:12])
                if t > 2**63 - 1:
                    raise Invalid(f"cosignature by {name} states a time above 2^63 - 1")
                message, sig = f"cosignature/v1\ntime {t}\n".encode() + text.encode(), blob[12:]
            else:
                continue
            try:
                Ed25519PublicKey.from_public_bytes(pub).verify(sig, message)
            except InvalidSignature:
                raise Invalid(f"signature by {name} does not verify") from None
            signed.append(name)
    return text, signed


def parse_checkpoint(text: str) -> tuple[str, int, bytes]:
    """tlog-checkpoint: at least three non-empty lines: origin, decimal size without leading
    zeros, base64 RFC 6962 root; any further lines are non-empty extensions."""
    lines = text.split("\n")
    if lines[-1] != "" or len(lines) < 4 or any(not line for line in lines[:-1]):
        raise Invalid("a checkpoint is three or more non-empty lines, each ending in a newline")
    origin, size, root = lines[:3]
    if not size.isdigit() or (size != "0" and size.startswith("0")):
        raise Invalid(f"tree size {size!r} is not a decimal without leading zeros")
    digest = base64.b64decode(root, validate=True)
    if len(digest) != 32:
        raise Invalid(f"root {root!r} is not a SHA-256 hash")
    return origin, int(size), digest


def tile_path(level: str, n: int, width: int = 256) -> str:
    digits = f"{n:d}"
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    path = "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])
    return f"tile/{level}/{path}" + ("" if width == 256 else f".p/{width}")


def fetch_tree(size: int, get: Callable[[str], bytes]) -> list[bytes]:
    """Every leaf hash of a tree of ``size``, from level-0 tiles, each checked against its entry
    bundle, and every tile of every higher level (full or partial) checked against the leaves:
    tlog-tiles' hash i of tile n at level l is MTH(D[(n*256 + i) * 256**l : (n*256 + i + 1) * 256**l]),
    and the level's rightmost tile has floor(size / 256**l) mod 256 hashes."""
    leaves: list[bytes] = []
    for n in range((size + 255) // 256):
        width = min(256, size - 256 * n)
        tile = get(tile_path("0", n, width))
        bundle = get(tile_path("entries", n, width))
        hashes = [tile[i : i + 32] for i in range(0, len(tile), 32)]
        entries, at = [], 0
        while at < len(bundle):
            (length,) = struct.unpack(">H", bundle[at : at + 2])
            entries.append(bundle[at + 2 : at + 2 + length])
            at += 2 + length
        if len(hashes) != width or [leaf(e) for e in entries] != hashes:
            raise Invalid(f"level-0 tile {n} does not hash its entry bundle")
        leaves += hashes
    level = 1
    while size >> (8 * level):
        span, subtrees = 256**level, size >> (8 * level)
        for n in range((subtrees + 255) // 256):
            width = min(256, subtrees - 256 * n)
            tile = get(tile_path(str(level), n, width))
            if len(tile) != 32 * width:
                raise Invalid(f"level-{level} tile {n} has {len(tile)} bytes, not {32 * width}")
            for i in range(width):
                j = 256 * n + i
                if tile[32 * i : 32 * i + 32] != mth(leaves[span * j : span * (j + 1)]):
                    raise Invalid(f"level-{level} tile {n} hash {i} is not the root of its {span} leaves")
        level += 1
    return leaves


def verify_inclusion(leaf_hash: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = node(p, r)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_tlog_proof(data: bytes, log_vkey: str, witness_vkeys: list[str]) -> tuple[bytes, list[str]]:
    """Check a c2sp.org/tlog-proof@v1 whose extra is salt(32) ‖ entry and whose leaf is
    SHA-256(0x00 ‖ SHA-256("infermeter/entry-commitment/v1\\n" ‖ salt ‖ entry)).
    Returns the entry and the witnesses that cosigned."""
    head, _, note = data.partition(b"\n\n")
    lines = head.decode().split("\n")
    if lines[0] != "c2sp.org/tlog-proof@v1":
        raise Invalid("not a c2sp.org/tlog-proof@v1")
    extra = b""
    if lines[1].startswith("extra "):  # optional: omitted when there is no extra data
        extra = base64.b64decode(lines.pop(1)[6:], validate=True)
    keyword, _, number = lines[1].partition(" ")
    if keyword != "index" or not (number.isascii() and number.isdigit()) or str(int(number)) != number:
        raise Invalid(f"the line after the header (and extra) is {lines[1]!r}, not 'index N'")
    index = int(number)
    path = [base64.b64decode(x, validate=True) for x in lines[2:]]
    if len(extra) <= 32:
        raise Invalid("an infermeter receipt's extra data is a 32-byte salt and the entry")
    text, signed = open_note(note, [log_vkey, *witness_vkeys])
    origin, size, root = parse_checkpoint(text)
    if parse_vkey(log_vkey)[0] not in signed or origin != parse_vkey(log_vkey)[0]:
        raise Invalid("the checkpoint is not signed by the log")
    salt, entry = extra[:32], extra[32:]
    commitment = sha(b"infermeter/entry-commitment/v1\n" + salt + entry)
    if not verify_inclusion(leaf(commitment), index, size, path, root):
        raise Invalid("inclusion proof fails")
    return entry, [w for w in signed if w != origin]
