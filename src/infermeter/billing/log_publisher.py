"""Signs the public log at most once a second while it grows, and collects witness cosignatures.

``LogPublisher.tick`` signs a checkpoint when the ledger grew (``PublicLog.publish``) and
sends it to every configured witness (c2sp.org/tlog-witness ``add-checkpoint``) with a
consistency proof from the size that witness last cosigned; a 409 naming another size is
retried once from that size. Cosignatures are checked with the witness's key before they are
stored. A witness that is down or refuses is logged and tried again at the next checkpoint;
signing never waits for one longer than ``timeout_s``.

Witnesses are configured as ``URL VKEY`` pairs separated by ``;``
(``INFERMETER_WITNESSES``), VKEY being the witness's cosignature verifier key
(``name+id+base64(0x04 ‖ key)``) and URL its prefix (``add-checkpoint`` is appended).
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from infermeter.billing import signed_note
from infermeter.billing.public_log import LogCheckpoint, PublicLog
from infermeter.billing.signed_note import COSIGNATURE_V1, NoteError, VerifierKey
from infermeter.billing.witness import AddCheckpoint
from infermeter.core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WitnessConfig:
    url: str
    key: VerifierKey


def parse_witnesses(text: str) -> list[WitnessConfig]:
    """``URL VKEY;URL VKEY`` → configs; ConfigError naming the bad item."""
    out: list[WitnessConfig] = []
    for item in filter(None, (i.strip() for i in text.split(";"))):
        parts = item.split()
        if len(parts) != 2 or not parts[0].startswith(("http://", "https://")):
            raise ConfigError(
                f"witness {item!r} is not 'URL VKEY', e.g. 'http://127.0.0.1:7380 "
                "w1+1a2b3c4d+BB…' (the VKEY `infermeter witness serve` prints)"
            )
        try:
            key = VerifierKey.parse(parts[1])
        except NoteError as exc:
            raise ConfigError(f"witness {parts[0]}: {exc}") from None
        if key.key_type != COSIGNATURE_V1:
            raise ConfigError(f"witness key {parts[1]} is not a cosignature (type 0x04) key")
        out.append(WitnessConfig(parts[0].rstrip("/"), key))
    return out


def post_add_checkpoint(url: str, body: bytes, timeout_s: float) -> tuple[int, str]:
    """POST ``body`` to ``<url>/add-checkpoint``; (status, body). OSError if unreachable."""
    req = urllib.request.Request(
        f"{url}/add-checkpoint", data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


class LogPublisher:
    """The background signer of ``log``. ``start`` once; ``stop`` signs what is left."""

    def __init__(
        self,
        public_log: PublicLog,
        witnesses: Sequence[WitnessConfig] = (),
        *,
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.log = public_log
        self.witnesses = list(witnesses)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.last_error: dict[str, str] = {}  # witness name → why its last submission failed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="infermeter-public-log", daemon=True)

    def tick(self) -> LogCheckpoint:
        """Sign if the log grew, then bring every witness up to the newest checkpoint."""
        with self._lock:
            cp, _ = self.log.publish()
            for witness in self.witnesses:
                if self.log.cosigned_size(witness.key.name) < cp.tree_size or not self._has(cp, witness):
                    self.submit(witness, cp)
            return cp

    def covering(self, seq: int) -> LogCheckpoint:
        """The newest checkpoint, signed (and witnessed) now if it does not include ``seq`` yet."""
        latest = self.log.latest()
        if latest is not None and latest.tree_size > seq:
            return latest
        return self.tick()

    def _has(self, cp: LogCheckpoint, witness: WitnessConfig) -> bool:
        return any(s.name == witness.key.name for s in self.log.cosigned(cp).signatures)

    def submit(self, witness: WitnessConfig, cp: LogCheckpoint) -> bool:
        """Ask ``witness`` to cosign ``cp``; store and return True when it did."""
        name = witness.key.name
        old = self.log.cosigned_size(name)
        for _ in range(2):
            if old > cp.tree_size:
                return self._failed(
                    name,
                    f"witness {name} has cosigned a tree of {old} entries, larger than this log's "
                    f"{cp.tree_size}: the log was rolled back or forked",
                )
            body = AddCheckpoint(old, tuple(self.log.consistency(old, cp.tree_size)), cp.note.encode())
            try:
                status, text = post_add_checkpoint(witness.url, body.encode(), self.timeout_s)
            except OSError as exc:
                return self._failed(name, f"witness {name} at {witness.url} is unreachable ({exc})")
            if status == 409 and text.strip().isdigit() and int(text.strip()) != old:
                old = int(text.strip())
                continue
            if status != 200:
                return self._failed(
                    name, f"witness {name} refused tree size {cp.tree_size}: {status} {text.strip()}"
                )
            try:
                note = signed_note.parse(signed_note.parse(cp.note).text + "\n" + text)
                sigs = [s for s in note.signatures if signed_note.signature_valid(note.text, s, witness.key)]
            except NoteError as exc:
                return self._failed(name, f"witness {name} answered no valid cosignature ({exc})")
            if not sigs:
                return self._failed(
                    name, f"witness {name} answered no cosignature by its key {witness.key.text()}"
                )
            self.log.add_cosignature(cp, name, sigs[0])
            self.last_error.pop(name, None)
            return True
        return self._failed(name, f"witness {name} keeps answering 409 for tree size {cp.tree_size}")

    def _failed(self, name: str, why: str) -> bool:
        self.last_error[name] = why
        log.warning("%s", why)
        return False

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # keep the thread alive: the next tick tries again
                log.exception("signing the public log failed")
            if self._stop.wait(self.interval_s):
                return

    def stop(self, *, final: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if final:
            try:
                self.tick()
            except Exception:
                log.exception("the final public-log checkpoint failed")


__all__ = ["LogPublisher", "WitnessConfig", "parse_witnesses", "post_add_checkpoint"]
