"""Wiring: builds the store, engines, worker and metering pipeline from settings."""
