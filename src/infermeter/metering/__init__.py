"""Step timers, attribution, per-request meters, window sampling and Resource Units."""
