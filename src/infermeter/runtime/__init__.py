"""Engines, the built-in model, the pure scheduler, the worker loop and the router."""
