"""Observability: Prometheus instruments shared by the wiring and the API."""
