"""Calibration is a change to prices: candidates, a gate, activation, rollback.

``infermeter calibrate`` saves every run as a *candidate* (``calibrate.save``). A candidate
prices nothing until it is *active*. It becomes active when every cost model it fitted has a
fit MAPE under ``MAPE_GATE_PERCENT`` (15 %), or when an operator activates it by name
(``calibrate --activate``, ``calibrate activate VERSION``). The activation history is
``<home>/calibration/active.json`` (``{"history": [version, ...]}``, newest last);
``rollback`` drops the newest, so the one before it (or, when none is left, the built-in
seed table) prices again. The service reads the active calibration once, at start
(``load_active``), and every usage record names it: its ``ru_table_version`` is the
calibration's version and its ``cost_model_version`` the fitted model's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from infermeter.core.errors import InvalidRequest, NotFound
from infermeter.metering.attribution import CostModel
from infermeter.metering.calibrate import CALIBRATION_DIR, Calibration, LoadedCalibration

MAPE_GATE_PERCENT = Decimal(15)
ACTIVE_FILE = "active.json"


@dataclass(frozen=True, slots=True)
class Candidate:
    calibration: Calibration
    path: Path

    @property
    def version(self) -> str:
        return self.calibration.version


def gate_problem(calibration: Calibration) -> str | None:
    """Why ``calibration`` may not activate itself; None when its fit passes the gate."""
    models = calibration.cost_models
    if not models:
        return "it fitted no cost model, so there is no fit to judge"
    engine_id, fitted = max(models.items(), key=lambda item: item[1].mape_percent)
    if fitted.mape_percent >= MAPE_GATE_PERCENT:
        return (
            f"engine {engine_id}'s cost model fits its steps with {fitted.mape_percent} % MAPE, "
            f"not under the {MAPE_GATE_PERCENT} % gate"
        )
    return None


def worst_mape(calibration: Calibration) -> Decimal | None:
    return max((f.mape_percent for f in calibration.cost_models.values()), default=None)


def candidates(home: Path) -> list[Candidate]:
    """Every saved calibration, oldest first."""
    folder = Path(home) / CALIBRATION_DIR
    if not folder.is_dir():
        return []
    found = [
        Candidate(Calibration.from_json(json.loads(p.read_text(encoding="utf-8"))), p)
        for p in folder.glob("calibration-*.json")
    ]
    return sorted(found, key=lambda c: (c.calibration.created_at, c.path.name))


def history(home: Path) -> list[str]:
    path = Path(home) / CALIBRATION_DIR / ACTIVE_FILE
    if not path.is_file():
        return []
    return [str(v) for v in json.loads(path.read_text(encoding="utf-8"))["history"]]


def active_version(home: Path) -> str | None:
    versions = history(home)
    return versions[-1] if versions else None


def _write_history(home: Path, versions: list[str]) -> None:
    folder = Path(home) / CALIBRATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (ACTIVE_FILE + ".tmp")
    tmp.write_text(json.dumps({"history": versions}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / ACTIVE_FILE)  # atomic: a crash leaves the old or the new history


def find(home: Path, version: str) -> Candidate:
    for candidate in candidates(home):
        if candidate.version == version:
            return candidate
    known = ", ".join(c.version for c in candidates(home)) or "none"
    raise NotFound(f"no calibration {version!r}; saved: {known} (see `infermeter calibrate list`)")


def activate(home: Path, version: str) -> Candidate:
    """Make ``version`` the active calibration from the service's next start."""
    candidate = find(home, version)
    _write_history(home, [*history(home), version])
    return candidate


def rollback(home: Path) -> str | None:
    """Deactivate the active calibration; returns the one active now (None: the seed table)."""
    versions = history(home)
    if not versions:
        raise InvalidRequest(
            "no calibration is active, so there is nothing to roll back; prices use the seed RU table"
        )
    _write_history(home, versions[:-1])
    return versions[-2] if len(versions) > 1 else None


def load_active(home: Path) -> LoadedCalibration | None:
    """The active calibration's RU table, and each engine's newest model among those activated.

    None when no calibration is active (the service prices with the seed table).
    """
    versions = history(home)
    if not versions:
        return None
    by_version = {c.version: c for c in candidates(home)}
    chain = [by_version[v] for v in versions if v in by_version]
    if versions[-1] not in by_version:
        raise NotFound(
            f"the active calibration {versions[-1]} has no file under {Path(home) / CALIBRATION_DIR}; "
            "restore it, or `infermeter calibrate rollback`"
        )
    models: dict[str, CostModel] = {}
    for candidate in chain:
        for engine_id, fitted in candidate.calibration.cost_models.items():
            models[engine_id] = fitted.model
    return LoadedCalibration(
        by_version[versions[-1]].calibration.ru_table, models, tuple(c.path for c in chain)
    )


__all__ = [
    "ACTIVE_FILE",
    "MAPE_GATE_PERCENT",
    "Candidate",
    "activate",
    "active_version",
    "candidates",
    "find",
    "gate_problem",
    "history",
    "load_active",
    "rollback",
    "worst_mape",
]
