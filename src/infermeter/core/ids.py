"""Identifiers: readable prefixes, random bodies, sortable by creation time."""

from __future__ import annotations

import os
import time


def new_id(prefix: str) -> str:
    """``prefix_`` + 12 hex digits of milliseconds + 12 random hex digits (time-sortable)."""
    ms = time.time_ns() // 1_000_000
    return f"{prefix}_{ms:012x}{os.urandom(6).hex()}"


def request_id() -> str:
    return new_id("req")


def record_id() -> str:
    return new_id("rec")


def tenant_id() -> str:
    return new_id("ten")
