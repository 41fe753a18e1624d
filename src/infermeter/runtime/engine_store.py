"""The engine store: built artifacts on disk, indexed in the service's SQLite file.

Layout under ``<home>``::

    engines/<sha256[:16]>/   model.onnx | model.plan | weights.npz   (the artifact)
                             config.json, tokenizer.json, ...        (what serving needs)
                             metadata.json                           (the EngineRecord)
    engines/.staging/        builds in progress (moved into place when done)
    models/<name>/           a model added with ``infermeter models add`` (HF layout)
    infermeter.db            table ``engines``: one row per artifact sha256;
                             table ``models``: one row per added model

An engine is keyed by its artifact's sha256 and tied to the runtime version and device it
was built for: ``check`` re-hashes the artifact and compares both with the running process,
and refuses a changed, stale or foreign engine with ``StaleEngine`` naming the
``infermeter engines build ...`` command that rebuilds it. Only stdlib ``sqlite3`` here: the
billing store owns its own tables in the same file and this module never touches them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infermeter.core.errors import ConfigError, NotFound, StaleEngine
from infermeter.core.types import Precision
from infermeter.runtime.compile.metadata import EngineRecord

METADATA_FILE = "metadata.json"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS engines (
    sha256          TEXT PRIMARY KEY,
    engine_id       TEXT NOT NULL UNIQUE,
    model           TEXT NOT NULL,
    backend         TEXT NOT NULL,
    precision       TEXT NOT NULL,
    device          TEXT NOT NULL,
    runtime_version TEXT NOT NULL,
    built_at        TEXT NOT NULL,
    dir             TEXT NOT NULL,
    record          TEXT NOT NULL
)
"""
_MODELS_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name     TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    source   TEXT NOT NULL,
    dir      TEXT NOT NULL,
    added_at TEXT NOT NULL,
    info     TEXT NOT NULL
)
"""
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A model added with ``infermeter models add``: where it came from and where it lives."""

    name: str
    kind: str  # "hf" (a Hugging Face folder) | "gguf" | "onnx" (an Optimum export)
    source: str  # the path it was added from
    model_dir: str  # its files in the store's layout (HF folder, or the ONNX export)
    added_at: str  # ISO 8601 UTC
    info: dict[str, Any]  # architecture, chat template present, ...


@dataclass(frozen=True, slots=True)
class RuntimeEnv:
    """The runtime and device this process would run an engine on."""

    runtime: str  # onnxruntime | tensorrt | torch
    version: str
    device: str  # "cpu" or "cuda"
    device_name: str
    compute_capability: str | None = None
    portable: bool = True  # False: the artifact is compiled for one GPU model (TensorRT)


def cpu_name() -> str:
    """A readable CPU model name (``/proc/cpuinfo`` where present)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def onnxruntime_env() -> RuntimeEnv:
    """ONNX Runtime on the CPU: graphs are portable across CPU models."""
    import onnxruntime as ort  # type: ignore[import-untyped]  # ships no type information

    return RuntimeEnv("onnxruntime", str(ort.__version__), "cpu", cpu_name())


def file_sha256(paths: Iterable[Path]) -> str:
    """sha256 of the files' bytes, concatenated in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def artifact_paths(engine_dir: Path, record: EngineRecord) -> list[Path]:
    """The artifact file, then any external-data files the build recorded."""
    extra = [str(n) for n in record.options.get("external_data", [])]
    return [engine_dir / record.artifact, *(engine_dir / n for n in extra)]


class EngineStore:
    """Engine artifacts under ``<home>/engines`` and their index in ``<home>/infermeter.db``."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.root = self.home / "engines"
        self.root.mkdir(parents=True, exist_ok=True)
        self._db_path = self.home / "infermeter.db"
        self._conn = sqlite3.connect(self._db_path, timeout=30, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 30000")
        with self._conn:
            self._conn.execute(_SCHEMA)
            self._conn.execute(_MODELS_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    # writing ----------------------------------------------------------------------
    def staging(self) -> Path:
        """A fresh, empty directory for a build in progress (same filesystem as the store)."""
        base = self.root / ".staging"
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="build-", dir=base))

    def put(self, staging: Path, record: EngineRecord) -> EngineRecord:
        """Move a finished build into ``engines/<sha[:16]>``, write its metadata, index it.

        The artifact is re-hashed first: a record whose sha256 does not match its artifact is
        refused. Putting the same artifact again (a rebuild that produced identical bytes)
        replaces its files and record, which also repairs a damaged copy.
        """
        actual = file_sha256(artifact_paths(staging, record))
        if actual != record.sha256:
            raise ValueError(
                f"engine {record.engine_id}: artifact sha256 {actual[:12]} does not match the "
                f"record's {record.short_sha}; hash the artifact after writing it"
            )
        target = self.root / record.sha256[:16]
        _write_json(staging / METADATA_FILE, record.to_json())
        if target.exists():  # a rebuild: the fresh, verified files replace whatever is there
            old = self.staging()
            os.replace(target, old / "replaced")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, target)
        with self._conn:
            self._conn.execute(
                "DELETE FROM engines WHERE engine_id = ? AND sha256 != ?", (record.engine_id, record.sha256)
            )
            self._conn.execute(
                "INSERT OR REPLACE INTO engines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.sha256, record.engine_id, record.model, record.backend,
                 record.precision.value, record.device, record.runtime_version,
                 record.built_at, target.name, json.dumps(record.to_json(), sort_keys=True)),
            )  # fmt: skip
        return record

    def remove(self, record: EngineRecord) -> None:
        """Drop an engine from the index and delete its directory."""
        with self._conn:
            self._conn.execute("DELETE FROM engines WHERE sha256 = ?", (record.sha256,))
        shutil.rmtree(self.path(record), ignore_errors=True)

    def put_model(self, model: ModelRecord) -> ModelRecord:
        """Index an added model (adding the same name again replaces its row)."""
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                (model.name, model.kind, model.source, model.model_dir, model.added_at,
                 json.dumps(model.info, sort_keys=True)),
            )  # fmt: skip
        return model

    def models(self) -> list[ModelRecord]:
        """Every added model, by name."""
        rows = self._conn.execute(
            "SELECT name, kind, source, dir, added_at, info FROM models ORDER BY name"
        ).fetchall()
        return [
            ModelRecord(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), json.loads(r[5])) for r in rows
        ]

    def model_root(self, name: str) -> Path:
        """Where an added model's files live: ``<home>/models/<name>``."""
        return self.home / "models" / name

    # reading ----------------------------------------------------------------------
    def list(self, model: str | None = None) -> list[EngineRecord]:
        """Every indexed engine (of ``model``), newest build first."""
        query = "SELECT record FROM engines"
        args: tuple[str, ...] = ()
        if model is not None:
            query += " WHERE model = ?"
            args = (model,)
        rows = self._conn.execute(query + " ORDER BY built_at DESC, engine_id", args).fetchall()
        return [_record(row[0]) for row in rows]

    def get(self, ref: str) -> EngineRecord:
        """The engine whose engine_id is ``ref`` or whose sha256 starts with it (6+ chars)."""
        row = self._conn.execute("SELECT record FROM engines WHERE engine_id = ?", (ref,)).fetchone()
        if row is None and len(ref) >= 6:
            rows = self._conn.execute(
                "SELECT record FROM engines WHERE sha256 LIKE ?", (ref.lower() + "%",)
            ).fetchall()
            if len(rows) > 1:
                raise ConfigError(f"sha256 prefix {ref!r} matches {len(rows)} engines; give more")
            row = rows[0] if rows else None
        if row is None:
            raise NotFound(
                f"no engine {ref!r} in {self.root}; list them with `infermeter engines list` "
                "or build one with `infermeter engines build`"
            )
        return _record(row[0])

    def latest(self, model: str, backend: str, precision: Precision, device: str) -> EngineRecord | None:
        """The newest engine of that kind, or None."""
        row = self._conn.execute(
            "SELECT record FROM engines WHERE model = ? AND backend = ? AND precision = ? "
            "AND device = ? ORDER BY built_at DESC LIMIT 1",
            (model, backend, precision.value, device),
        ).fetchone()
        return None if row is None else _record(row[0])

    def path(self, record: EngineRecord) -> Path:
        return self.root / record.sha256[:16]

    def check(self, record: EngineRecord, env: RuntimeEnv) -> Path:
        """The engine's directory, after proving it is intact and built for ``env``.

        Raises StaleEngine (naming the rebuild command) when the artifact is missing or its
        sha256 changed, when it was built for another runtime or runtime version, or for
        a device this process does not have.
        """
        engine_dir = self.path(record)
        rebuild = f"rebuild it with `{record.build.command()}`"
        what = f"engine {record.engine_id} ({record.model}/{record.backend}/{record.precision})"
        paths = artifact_paths(engine_dir, record)
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise StaleEngine(f"{what} has lost {', '.join(missing)} from {engine_dir}; {rebuild}")
        actual = file_sha256(paths)
        if actual != record.sha256:
            raise StaleEngine(
                f"{what}: {record.artifact} has sha256 {actual[:12]}, but the engine was built "
                f"as {record.short_sha}; the file changed after the build; {rebuild}"
            )
        if (record.runtime, record.runtime_version) != (env.runtime, env.version):
            raise StaleEngine(
                f"{what} was built for {record.runtime} {record.runtime_version}; this process "
                f"runs {env.runtime} {env.version}; {rebuild}"
            )
        same_model = (record.device_name, record.compute_capability) == (
            env.device_name,
            env.compute_capability,
        )
        if record.device != env.device or not (env.portable or same_model):
            built = _device_text(record.device, record.device_name, record.compute_capability)
            here = _device_text(env.device, env.device_name, env.compute_capability)
            raise StaleEngine(f"{what} was built for {built}; this machine has {here}; {rebuild}")
        return engine_dir


def _device_text(device: str, name: str, cc: str | None) -> str:
    return f"{device} {name}" + (f" (compute capability {cc})" if cc else "")


def _record(text: str) -> EngineRecord:
    return EngineRecord.from_json(json.loads(text))


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


__all__ = [
    "METADATA_FILE",
    "EngineStore",
    "ModelRecord",
    "RuntimeEnv",
    "artifact_paths",
    "cpu_name",
    "file_sha256",
    "onnxruntime_env",
]
