"""infermeter: serve LLMs and bill every request by the device resources it really used."""

__version__ = "0.1.0"
