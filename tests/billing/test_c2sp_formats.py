"""C2SP signed notes, checkpoints and tile paths: the specs' examples, round trips, tampering."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from infermeter.billing import signed_note, tlog_proof
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
# c2sp.org/signed-note's own examples: a verifier key with the note it verifies, and a note
# whose text holds an empty line (its key is not published, so it can only be parsed).
FOO = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
FOO_NOTE = (
    "This is an example message.\n"
    "\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmR"
    "KuwHjG1Yu72IneyaQM=\n"
)
QUASIMODO_TEXT = (
    "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u00e8 subito sera.\n"
)
QUASIMODO_NOTE = (
    QUASIMODO_TEXT + "\n\u2014 quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGI"
    "TLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
)
# c2sp.org/tlog-checkpoint's and tlog-cosignature's example: a checkpoint, its log signature,
# a witness cosignature, and the message that cosignature's time makes it sign.
SOFA_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SOFA_COSIGNED = (
    SOFA_TEXT + "\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcy"
    "v2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b"
    "2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
SOFA_MESSAGE = "cosignature/v1\ntime 1679315147\n" + SOFA_TEXT
# c2sp.org/tlog-proof's example up to its checkpoint (whose signatures the spec elides).
PROOF_HEAD = (
    "c2sp.org/tlog-proof@v1\n"
    "extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ\n"
    "index 73894\n"
    "gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=\n"
    "B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=\n"
    "EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=\n"
    "RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=\n"
    "AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=\n"
    "\n"
)
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


def test_the_signed_note_spec_example_verifies_with_its_verifier_key() -> None:
    """c2sp.org/signed-note's example vkey states its id and verifies its example note."""
    key = VerifierKey.parse(FOO)
    assert key.text() == FOO and key.key_id.hex() == "530d903a"
    note = signed_note.parse(FOO_NOTE)
    assert note.text == "This is an example message.\n" and note.encode() == FOO_NOTE.encode()
    assert signed_note.verified_by(note, [key]) == [key]
    assert ind.open_note(FOO_NOTE.encode(), [FOO])[1] == ["example.com/foo"]


def test_a_note_text_may_hold_empty_lines_and_ends_at_the_last_one() -> None:
    """signed-note: the text MAY contain empty lines; the signatures follow the last one."""
    note = signed_note.parse(QUASIMODO_NOTE.encode())
    assert note.text == QUASIMODO_TEXT
    assert [s.name for s in note.signatures] == ["quasimodo.example/salvatore"]
    assert note.encode() == QUASIMODO_NOTE.encode()
    sig = signed_note.sign(QUASIMODO_TEXT, "example.com/foo", KEY)
    vkey = signed_note.verifier_for("example.com/foo", KEY)
    assert signed_note.verified_by(signed_note.parse(Note(QUASIMODO_TEXT, (sig,)).encode()), [vkey])


def test_only_control_characters_below_space_other_than_newline_are_refused() -> None:
    """signed-note forbids ASCII controls below U+0020 but newline, in the text and signature lines."""
    for bad in ("tab\there\n", "cr\r\n", "nul\x00\n"):
        with pytest.raises(NoteError, match="control character"):
            signed_note.parse(bad + FOO_NOTE[FOO_NOTE.index("\n") :])
        with pytest.raises(NoteError, match="control character"):
            signed_note.sign(bad, "example.com/foo", KEY)
    with pytest.raises(NoteError, match="control character"):
        signed_note.parse(FOO_NOTE.replace(" Uw2Q", " \x0bUw2Q"))
    delete = "del \x7f and \u00e8\n"  # DEL (U+007F) is not below U+0020: allowed
    sig = signed_note.sign(delete, "example.com/foo", KEY)
    assert signed_note.parse(Note(delete, (sig,)).encode()).text == delete


def test_a_verifier_key_id_is_eight_lowercase_hex_digits() -> None:
    """signed-note's hex is fixed-length lowercase: an uppercase or spaced id is not a vkey."""
    for bad in (FOO.replace("530d903a", "530D903A"), FOO.replace("530d903a", "53 0d 90 3a"),
                FOO.replace("530d903a", "0530d903a")):  # fmt: skip
        with pytest.raises(NoteError, match="8 lowercase hex"):
            VerifierKey.parse(bad)


def test_the_cosignature_spec_example_states_its_time_and_signed_message() -> None:
    """tlog-cosignature's example line carries time 1679315147; v1 signs header, time line, body."""
    note = signed_note.parse(SOFA_COSIGNED)
    assert note.text == SOFA_TEXT and parse_checkpoint(note.text).size == 20852163
    log_sig, cosig = note.signatures
    assert (len(log_sig.signature), len(cosig.signature)) == (64, 72)
    assert signed_note.cosignature_time(cosig) == 1679315147
    assert signed_note.cosigned_message(note.text, 1679315147) == SOFA_MESSAGE.encode()


def test_a_cosignature_time_above_2_63_minus_1_is_refused() -> None:
    """tlog-cosignature: the timestamp MUST NOT exceed 2^63 - 1, signing or verifying."""
    text = TreeHead("example.com/log", 3, bytes(32)).text()
    vkey = signed_note.verifier_for("w1", WITNESS, COSIGNATURE_V1)
    assert signed_note.signature_valid(text, signed_note.cosign(text, "w1", WITNESS, 2**63 - 1), vkey)
    with pytest.raises(NoteError, match="2\\^63"):
        signed_note.cosign(text, "w1", WITNESS, 2**63)
    too_late = (2**63).to_bytes(8, "big")
    forged = signed_note.NoteSignature(
        "w1", vkey.key_id, too_late + WITNESS.sign(signed_note.cosigned_message(text, 2**63))
    )
    assert not signed_note.signature_valid(text, forged, vkey)


def _fancylog() -> Note:
    text = "example.com/fancylog\n109482\nsFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=\n"
    return Note(text, (signed_note.sign(text, "example.com/fancylog", KEY),))


def test_the_tlog_proof_spec_example_parses_line_by_line() -> None:
    """tlog-proof's example: header, extra, index 73894, five path hashes, blank line, checkpoint."""
    data = PROOF_HEAD + _fancylog().encode().decode()
    proof = tlog_proof.parse(data)
    assert proof.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz") and proof.index == 73894
    assert [base64.b64encode(h).decode() for h in proof.path] == PROOF_HEAD.split("\n")[3:8]
    assert parse_checkpoint(proof.checkpoint.text).size == 109482
    assert proof.text() == data


def test_a_tlog_proof_without_extra_data_omits_the_extra_line() -> None:
    """tlog-proof: 'If no extra data is present, this line is omitted' — written so, read so."""
    proof = tlog_proof.TlogProof(b"", 0, (), _fancylog())
    assert proof.text().startswith("c2sp.org/tlog-proof@v1\nindex 0\n\nexample.com/fancylog\n")
    assert tlog_proof.parse(proof.text()) == proof
    for bad in ("index 07", "index -1", "extra !!", "Index 7"):
        with pytest.raises(NoteError):
            tlog_proof.parse(f"c2sp.org/tlog-proof@v1\n{bad}\n\n" + _fancylog().encode().decode())


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


def test_tile_widths_match_the_tlog_tiles_examples() -> None:
    """tlog-tiles: size 70,000 is 273 full + one 112 at level 0, one full + 17 at 1, 1 at 2;
    size 256 is one full level-0 tile and a level-1 tile of width 1."""
    assert [tile_width(0, n, 70_000) for n in (272, 273, 274)] == [256, 112, 0]
    assert [tile_width(1, n, 70_000) for n in (0, 1, 2)] == [256, 17, 0]
    assert [tile_width(2, n, 70_000) for n in (0, 1)] == [1, 0] and tile_width(3, 0, 70_000) == 0
    assert (tile_width(0, 0, 256), tile_width(0, 1, 256), tile_width(1, 0, 256)) == (256, 0, 1)


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
