"""C2SP signed notes, checkpoints and tile paths: the specs' examples, round trips, tampering."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from infermeter.billing import signed_note
from infermeter.billing.signed_note import COSIGNATURE_V1, Note, NoteError, VerifierKey
from infermeter.billing.tiles import (
    TilePathError,
    TileRef,
    decode_entry_bundle,
    encode_entry_bundle,
    encode_index,
    parse_tile_path,
    tile_width,
)
from infermeter.billing.tlog_checkpoint import TreeHead, parse_checkpoint
from tests import independent_tlog as ind

# Published examples: Go's golang.org/x/mod/sumdb/note documentation and the GOSUMDB key.
PETER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_NOTE = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
    "\n"
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZ"
    "SNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
SUMDB = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
WITNESS = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def test_published_verifier_keys_parse_with_the_key_ids_they_state() -> None:
    """The sumdb and note-documentation keys' ids are SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[:4]."""
    for text in (PETER, SUMDB):
        key = VerifierKey.parse(text)
        assert key.text() == text and key.key_type == signed_note.ED25519


def test_the_published_example_note_verifies() -> None:
    """Go's documented example note verifies with its documented key, here and independently."""
    note = signed_note.parse(PETER_NOTE.encode())
    assert signed_note.verified_by(note, [VerifierKey.parse(PETER)]) == [VerifierKey.parse(PETER)]
    assert note.encode() == PETER_NOTE.encode()
    assert ind.open_note(PETER_NOTE.encode(), [PETER])[1] == ["PeterNeumann"]


def test_a_signed_checkpoint_round_trips_and_verifies_independently() -> None:
    """A checkpoint note signed here is opened and checked by the independent client."""
    head = TreeHead("example.com/log", 12345, bytes(range(32)))
    sig = signed_note.sign(head.text(), "example.com/log", KEY)
    data = Note(head.text(), (sig,)).encode()
    vkey = signed_note.verifier_for("example.com/log", KEY).text()
    text, signed = ind.open_note(data, [vkey])
    assert signed == ["example.com/log"] and ind.parse_checkpoint(text) == (
        "example.com/log",
        12345,
        bytes(range(32)),
    )
    assert parse_checkpoint(signed_note.parse(data).text) == head


def test_a_cosignature_is_over_the_v1_header_time_and_checkpoint() -> None:
    """tlog-cosignature/v1: 0x04 key id, 8-byte time, Ed25519 over 'cosignature/v1\\ntime T\\n' ‖ body."""
    text = TreeHead("example.com/log", 3, bytes(32)).text()
    sig = signed_note.cosign(text, "w1", WITNESS, 1_700_000_000)
    vkey = signed_note.verifier_for("w1", WITNESS, COSIGNATURE_V1)
    assert base64.b64decode(vkey.text().split("+", 2)[2])[0] == 0x04
    assert signed_note.signature_valid(text, sig, vkey)
    assert signed_note.cosignature_time(sig) == 1_700_000_000
    assert ind.open_note(Note(text, (sig,)).encode(), [vkey.text()])[1] == ["w1"]


def test_unknown_signers_are_ignored_and_a_bad_known_signature_is_an_error() -> None:
    """A note signed by another key verifies by nobody; one altered after signing raises."""
    note = signed_note.parse(PETER_NOTE)
    assert signed_note.verified_by(note, [VerifierKey.parse(SUMDB)]) == []
    altered = signed_note.parse(PETER_NOTE.replace("cryptography", "cryptographY"))
    with pytest.raises(NoteError, match="does not verify"):
        signed_note.verified_by(altered, [VerifierKey.parse(PETER)])


@given(st.data())
def test_any_changed_byte_of_a_signed_checkpoint_is_caught(data: st.DataObject) -> None:
    """Flip one byte anywhere: the note no longer parses, or no longer verifies as the log's."""
    head = TreeHead("example.com/log", 7, bytes(range(32)))
    raw = bytearray(Note(head.text(), (signed_note.sign(head.text(), "example.com/log", KEY),)).encode())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    key = signed_note.verifier_for("example.com/log", KEY)
    try:
        note = signed_note.parse(bytes(raw))
        ok = signed_note.verified_by(note, [key]) == [key] and parse_checkpoint(note.text) == head
    except NoteError:
        ok = False
    assert not ok


def test_checkpoints_refuse_non_canonical_sizes_and_roots() -> None:
    """Leading zeros, a short root or an empty extension line are not checkpoints."""
    root = base64.b64encode(bytes(32)).decode()
    for bad in (f"o\n07\n{root}\n", "o\n7\nAAAA\n", f"o\n7\n{root}\n\n", "o\n7\n"):
        with pytest.raises(NoteError):
            parse_checkpoint(bad)


def test_tile_indexes_are_written_in_x_prefixed_groups_of_three() -> None:
    """tlog-tiles' examples: 1234067 → x001/x234/067; 5 → 005; partial tiles end in .p/W."""
    assert encode_index(1234067) == "x001/x234/067"
    assert encode_index(5) == "005" and encode_index(1000) == "x001/000"
    assert TileRef(0, 1234067, 7).path() == "tile/0/x001/x234/067.p/7"
    assert TileRef(None, 2).path() == "tile/entries/002"
    assert ind.tile_path("0", 1234067, 7) == "tile/0/x001/x234/067.p/7"


@given(st.sampled_from([None, 0, 1, 2, 63]), st.integers(0, 10**12), st.integers(1, 256))
def test_every_tile_path_parses_back_to_its_tile(level: int | None, index: int, width: int) -> None:
    """parse(path(t)) == t, and the independent encoder writes the same path."""
    ref = TileRef(level, index, width)
    assert parse_tile_path(ref.path()) == ref
    assert ind.tile_path("entries" if level is None else str(level), index, width) == ref.path()


def test_other_spellings_of_a_tile_path_are_refused() -> None:
    """Only the canonical path names a tile: no missing x, no padding, no width 256 or 0."""
    for bad in ("tile/0/1", "tile/0/x000/001", "tile/0/001/002", "tile/00/001", "tile/0/001.p/256",
                "tile/0/001.p/0", "tile/64/000", "tile/entries/x01/000", "tiles/0/000"):  # fmt: skip
        with pytest.raises(TilePathError):
            parse_tile_path(bad)


def test_tile_widths_follow_the_tree_size() -> None:
    """A tree of 600 leaves: level 0 has tiles of 256, 256, 88; level 1 one tile of 2."""
    assert [tile_width(0, n, 600) for n in range(4)] == [256, 256, 88, 0]
    assert tile_width(1, 0, 600) == 2 and tile_width(2, 0, 600) == 0


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_entry_bundles_round_trip(entries: list[bytes]) -> None:
    """uint16 big-endian length-prefixed entries decode to the entries encoded."""
    assert decode_entry_bundle(encode_entry_bundle(entries)) == entries


def test_a_truncated_entry_bundle_is_refused() -> None:
    """A length that runs past the end is an error, not a short entry."""
    with pytest.raises(ValueError, match="claims"):
        decode_entry_bundle(encode_entry_bundle([b"abc"])[:-1])
